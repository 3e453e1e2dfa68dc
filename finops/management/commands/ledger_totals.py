from django.core.management.base import BaseCommand

from finops.loading import rebuild_ledger_totals


class Command(BaseCommand):
    help = (
        "Recompute the monthly ledger totals the metric engine reads from the financial facts. "
        "Loads keep them; run this after changing facts by hand in the database."
    )

    def handle(self, *args, **options):
        totals = rebuild_ledger_totals()
        self.stdout.write(
            f"{totals:,} ledger totals recomputed from the financial facts. "
            "Run `python manage.py refresh --sync` to recompute the KPIs from them."
        )
