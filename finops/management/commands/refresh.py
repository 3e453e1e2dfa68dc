from django.core.management.base import BaseCommand, CommandError

from finops.models import DataSource, RefreshRun
from finops.refresh import RefreshInProgress, refresh
from finops.tasks import refresh_task


class Command(BaseCommand):
    help = "Run the refresh pipeline now: pull every active source (or one), load, recompute."

    def add_arguments(self, parser):
        parser.add_argument("--sync", action="store_true", help="Run here and wait, instead of queueing it.")
        parser.add_argument("--source", metavar="SLUG", help="Refresh only this data source.")

    def handle(self, *args, sync: bool, source: str | None, **options):
        if source and not DataSource.objects.filter(slug=source).exists():
            known = ", ".join(DataSource.objects.values_list("slug", flat=True)) or "none yet"
            raise CommandError(f"No data source {source!r} (known: {known}).")
        if not sync:
            result = refresh_task.delay(source_slug=source, trigger=RefreshRun.Trigger.COMMAND)
            self.stdout.write(
                f"Refresh queued for the worker (task {result.id}). See the Data page for progress."
            )
            return
        try:
            run = refresh(source_slug=source, trigger=RefreshRun.Trigger.COMMAND)
        except RefreshInProgress as busy:
            raise CommandError(str(busy)) from None
        for step in run.steps:
            if step["source"] == "recompute":
                self.stdout.write(
                    f"recompute ({step['months']} months): {step['kpi_values']:,} KPI values, "
                    f"{step['rows_inserted']:,} new, {step['rows_updated']:,} changed, "
                    f"{step['rows_deleted']:,} removed ({step['seconds']} s)"
                )
                continue
            self.stdout.write(
                f"{step['source']}: {step['status']}, read {step['rows_read']:,}, "
                f"inserted {step['rows_inserted']:,}, updated {step['rows_updated']:,}, "
                f"deleted {step['rows_deleted']:,} ({step['seconds']} s)"
            )
        for warning in run.warnings:
            self.stdout.write(self.style.WARNING(f"warning: {warning['source']}: {warning['message']}"))
        for error in run.errors[:50]:
            self.stderr.write(f"error: {error.get('message')}")
        if run.status != RefreshRun.Status.SUCCEEDED:
            raise CommandError(
                f"Run {run.pk} {run.status}: {len(run.errors)} error(s); nothing from those sources loaded."
            )
        self.stdout.write(self.style.SUCCESS(f"Run {run.pk} succeeded."))
