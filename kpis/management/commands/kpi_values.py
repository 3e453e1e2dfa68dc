import csv
import io
import json

from django.core.management.base import BaseCommand, CommandError

from finops.exports import safe_cell
from kpis.formatting import format_value
from kpis.selectors import UnknownName, kpi_values

COLUMNS = (
    "kpi",
    "grain",
    "period",
    "scenario",
    "entity",
    "value",
    "formatted",
    "target",
    "variance",
    "status",
)
COLUMNS += ("status_reason", "partial", "empty_reason", "formula_version")


class Command(BaseCommand):
    help = "Print a KPI's stored values with target and status (the same numbers the pages show)."

    def add_arguments(self, parser):
        parser.add_argument("code", help="KPI code, e.g. gross_margin_pct")
        parser.add_argument("--grain", choices=["month", "quarter", "year"], default="month")
        parser.add_argument("--scenario", help="Scenario code or name (default: actual).")
        parser.add_argument("--entity", help="Entity code or name (default: the top of the organization).")
        parser.add_argument("--format", choices=["csv", "json"], default="csv")

    def handle(self, *args, code, grain, scenario, entity, format, **options):
        try:
            values = list(kpi_values(code=code, grain=grain, scenario=scenario, entity=entity))
        except UnknownName as error:
            raise CommandError(str(error)) from None
        rows = [
            {
                "kpi": v.kpi.code,
                "grain": v.grain,
                "period": v.period.isoformat(),
                "scenario": v.scenario.code,
                "entity": v.entity.code,
                "value": None if v.value is None else str(v.value),
                "formatted": format_value(v.value, v.kpi.unit, v.kpi.decimals, v.entity.currency),
                "target": None if v.target is None else str(v.target),
                "variance": None if v.variance is None else str(v.variance),
                "status": v.status,
                "status_reason": v.status_reason,
                "partial": v.partial,
                "empty_reason": v.empty_reason,
                "formula_version": v.formula_version,
            }
            for v in values
        ]
        # Through self.stdout, so call_command(..., stdout=...) captures it.
        if format == "json":
            self.stdout.write(json.dumps(rows, indent=2))
            return
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({key: safe_cell(cell) for key, cell in row.items()} for row in rows)
        self.stdout.write(out.getvalue(), ending="")
