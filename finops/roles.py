"""Who may do what: the groups of the brief and their permissions, set up idempotently."""

from __future__ import annotations

from django.contrib.auth.models import Group, Permission, User
from django.db import transaction

LEADERSHIP = "Leadership"
ANALYSTS = "Analysts"
FINANCE = "Finance"
OPERATIONS = "Operations"

# Analysts define sources, accounts, KPIs and targets: full rights on these apps' models.
ANALYST_APPS = ("finops", "kpis", "alignment", "django_celery_beat")
# Department members own goals and KPIs: they may change alignment objects (goals, comments).
DEPARTMENT_APPS = ("alignment",)


def is_analyst(user: User) -> bool:
    return user.is_superuser or user.groups.filter(name=ANALYSTS).exists()


@transaction.atomic
def ensure_roles() -> dict[str, Group]:
    """Create the four groups with their permissions; safe to run any number of times."""
    groups = {
        name: Group.objects.get_or_create(name=name)[0]
        for name in (LEADERSHIP, ANALYSTS, FINANCE, OPERATIONS)
    }
    view_all = Permission.objects.filter(
        codename__startswith="view_", content_type__app_label__in=ANALYST_APPS
    )
    # Everyone makes and revokes their own API tokens (the admin shows each user only theirs).
    tokens = Permission.objects.filter(content_type__app_label="finops", content_type__model="apitoken")
    groups[LEADERSHIP].permissions.set(view_all | tokens)
    groups[ANALYSTS].permissions.set(Permission.objects.filter(content_type__app_label__in=ANALYST_APPS))
    department = view_all | tokens | Permission.objects.filter(content_type__app_label__in=DEPARTMENT_APPS)
    for name in (FINANCE, OPERATIONS):
        groups[name].permissions.set(department)
    return groups


DEMO_PASSWORD = "finops-demo"  # noqa: S105 - printed on purpose by `make run`
DEMO_USERS = {
    # username: (full name, groups, is_staff)
    # Goal owners may open the admin: they edit their own goals there and read the rest.
    "cfo": ("Carla Finch (CFO)", [LEADERSHIP, FINANCE], True),
    "coo": ("Omar Okafor (COO)", [LEADERSHIP, OPERATIONS], True),
    "analyst": ("Ana Lytic (FP&A)", [ANALYSTS, FINANCE], True),
}


@transaction.atomic
def ensure_demo_users() -> list[str]:
    """Create the demo logins (development only; `demo` refuses in production)."""
    groups = ensure_roles()
    for username, (full_name, group_names, is_staff) in DEMO_USERS.items():
        user, created = User.objects.get_or_create(username=username)
        first, _, last = full_name.partition(" ")
        user.first_name, user.last_name, user.is_staff = first, last, is_staff
        if created:
            user.set_password(DEMO_PASSWORD)
        user.save()
        user.groups.set([groups[name] for name in group_names])
    return list(DEMO_USERS)
