"""``python manage.py demo``: load the built-in demo company and create the demo logins."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from alignment.definitions import install_goals
from finops.errors import ImportRejected
from finops.models import Entity, RefreshRun
from finops.refresh import RefreshInProgress, refresh
from finops.roles import DEMO_PASSWORD, DEMO_USERS, ensure_demo_users
from finops.sources import demo
from kpis.definitions import install_library
from kpis.models import KPI


class Command(BaseCommand):
    help = (
        "Load the built-in demo company (generated, deterministic) as the data source 'demo' and "
        "create the demo logins. Running it again changes nothing. Refused in production."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--seed", type=int, help=f"Random seed (default {demo.DEFAULT_SEED}, or the stored one)."
        )
        parser.add_argument(
            "--months",
            type=int,
            help=f"Months of actuals and budget, {demo.MIN_MONTHS}-{demo.MAX_MONTHS} "
            f"(default {demo.DEFAULT_MONTHS}, or the stored number). The stored start month is kept.",
        )

    def handle(self, *args, seed: int | None = None, months: int | None = None, **options) -> None:
        if settings.PRODUCTION:
            raise CommandError(
                "The demo company and its logins (with a published password) are for development only; "
                "refusing to load them with FINOPS_ENV=production."
            )
        try:
            source = demo.demo_source_ensure(seed=seed, months=months)
        except ImportRejected as rejected:
            raise CommandError(str(rejected)) from None
        ensure_demo_users()
        try:
            run = refresh(source_slug=source.slug, trigger=RefreshRun.Trigger.COMMAND)
        except RefreshInProgress as busy:
            raise CommandError(str(busy)) from None
        if run.status != RefreshRun.Status.SUCCEEDED:
            problems = "\n".join(f"  {error['message']}" for error in run.errors[:20])
            raise CommandError(f"Loading the demo company failed (run {run.pk}):\n{problems}")
        # The standard KPI library on the demo's accounts; recompute if it added anything.
        library = install_library("demo")
        if library.measures_created or library.measures_updated or library.kpis_created:
            refresh(source_slug=source.slug, trigger=RefreshRun.Trigger.COMMAND)
        goals = install_goals("demo")

        config = demo.parse_config(source.config)
        step = run.steps[0]
        seconds = run.duration.total_seconds() if run.duration else 0.0
        forecast = config.forecast_periods
        entities = {
            entity.code: entity for entity in Entity.objects.filter(code__in=[e.code for e in demo.ENTITIES])
        }
        group = entities[demo.GROUP]
        subsidiaries = ", ".join(
            f"{entities[spec.code].name} ({entities[spec.code].currency})"
            for spec in demo.ENTITIES
            if spec.parent
        )
        write = self.stdout.write
        write(
            self.style.SUCCESS(
                f"Demo company loaded as data source '{source.slug}' (run {run.pk}, {seconds:.1f} s)."
            )
        )
        write(
            f"  Facts: {step['rows_read']:,} generated: {step['rows_inserted']:,} inserted, "
            f"{step['rows_updated']:,} updated, {step['rows_deleted']:,} deleted, "
            f"{step['rows_unchanged']:,} unchanged."
        )
        write(
            f"  Actual and budget: {config.periods[0]:%b %Y} to {config.periods[-1]:%b %Y} "
            f"({config.months} months, seed {config.seed}); "
            f"forecast: {forecast[0]:%b %Y} to {forecast[-1]:%b %Y}."
        )
        write(f"  Entities: {group.name} ({group.currency}) > {subsidiaries}.")
        kpis = KPI.objects.filter(is_active=True).count()
        write(f"  KPIs: {kpis} active ({len(library.kpis_created)} enabled from the standard library now).")
        write(
            f"  Goals: {len(goals.goals_created) + len(goals.goals_updated)} with {goals.links} KPI links "
            f"({len(goals.goals_created)} new)."
        )
        for warning in run.warnings:
            write(self.style.WARNING(f"  Note: {warning['message']}"))
        write(f"Demo logins (password '{DEMO_PASSWORD}'):")
        for username, (full_name, groups, is_staff) in DEMO_USERS.items():
            admin = ", admin site" if is_staff else ""
            write(f"  {username:<8} {full_name:<22} {', '.join(groups)}{admin}")
