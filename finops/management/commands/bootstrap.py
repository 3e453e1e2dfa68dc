from django.core.management.base import BaseCommand

from finops.roles import ensure_roles
from finops.schedule import ensure_nightly_schedule


class Command(BaseCommand):
    help = "Create the user groups with their permissions and the nightly refresh schedule (idempotent)."

    def handle(self, *args, **options):
        groups = ensure_roles()
        task = ensure_nightly_schedule()
        self.stdout.write(f"Groups: {', '.join(groups)}. Schedule: {task.name} ({task.crontab}).")
