"""``manage.py api_token USERNAME --name NAME [--days N]``: make an API token and print its key."""

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from finops.api_auth import issue_token


class Command(BaseCommand):
    help = "Make an API token for a user and print its key (shown once: only its digest is stored)."

    def add_arguments(self, parser):
        parser.add_argument("username", help="The user the token acts as.")
        parser.add_argument("--name", required=True, help="What uses it, e.g. 'Power BI finance'.")
        parser.add_argument("--days", type=int, help="Valid for this many days (default: no expiry).")

    def handle(self, *args, username, name, days, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user {username!r}.")
        if not user.is_active:
            raise CommandError(f"The user {username!r} is deactivated.")
        if days is not None and days < 1:
            raise CommandError("--days must be 1 or more.")
        expires = timezone.now() + timedelta(days=days) if days else None
        token, key = issue_token(user, name, expires_at=expires)
        self.stderr.write(
            f"API token {token.prefix}… for {username} ({name}); copy the key, it is not stored:"
        )
        self.stdout.write(key)
