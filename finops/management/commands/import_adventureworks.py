"""``python manage.py import_adventureworks DIR [--period-rule RULE] [--preview]``

Loads the AdventureWorksDW export in DIR as the data source ``adventureworks`` through the
refresh pipeline (so the import is recorded as a run and is all or nothing).

The default period rule is ``nearest_month_start``: it gives one period per month, and the
Budget scenario then covers exactly January to December 2011, a whole budget year, which is
the most plausible reading of the data (under ``nearest_month_end`` the budget would run from
December 2010 to November 2011). The data does not prove it, so the rule is printed, can be
chosen, and ``--preview`` shows what each rule does before anything is written.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import NoReturn

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count, Max, Min

from alignment.definitions import install_goals
from alignment.models import KPIDriver
from finops.errors import ImportRejected
from finops.models import CurrencyRate, DataSource, FinancialFact, OperationalFact, RefreshRun
from finops.periods import PeriodRule
from finops.refresh import RefreshInProgress, refresh
from finops.sources.adventureworks import (
    DEFAULT_PERIOD_RULE,
    export_warnings,
    period_mapping,
    read_export,
    rows_by_scenario_period,
)
from kpis.definitions import install_library
from kpis.models import KPI

SOURCE_SLUG = "adventureworks"
SOURCE_NAME = "AdventureWorksDW export"


def _month(period: date) -> str:
    return period.strftime("%b %Y")


class Command(BaseCommand):
    help = (
        "Load the AdventureWorksDW export in DIR as the data source 'adventureworks' "
        "(or, with --preview, show how its booking dates map to periods without writing anything)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("dir", help="Folder holding DimAccount.csv, FactFinance.csv and the other files.")
        parser.add_argument(
            "--period-rule",
            choices=[rule.value for rule in PeriodRule],
            default=DEFAULT_PERIOD_RULE.value,
            help=f"How booking dates map to monthly periods (default {DEFAULT_PERIOD_RULE.value}).",
        )
        parser.add_argument(
            "--preview",
            action="store_true",
            help="Show each booking date's period, the row counts and the warnings; write nothing.",
        )

    def handle(self, *args: object, **options: object) -> None:
        folder = Path(str(options["dir"])).expanduser()
        if not folder.is_dir():
            raise CommandError(
                f"Folder not found: {folder} (expected the AdventureWorksDW export files there)"
            )
        folder = folder.resolve()
        rule = PeriodRule(options["period_rule"])
        if options["preview"]:
            self._preview(folder, rule)
        else:
            self._import(folder, rule)

    def _preview(self, folder: Path, rule: PeriodRule) -> None:
        try:
            export = read_export(folder)
        except ImportRejected as rejected:
            self._rejected([str(error) for error in rejected.errors], len(rejected.errors))
        scenarios = sorted(export.scenarios.values(), key=lambda s: s.key)
        mapping = period_mapping(export, rule)
        shown = [s for s in scenarios if any(s.code in item.rows_by_scenario for item in mapping)]
        out = self.stdout.write
        out(f"Preview of {folder} under the period rule {rule} ({rule.label.lower()}); nothing is written.\n")
        out(f"  {'booked on':<13} {'period':<8}" + "".join(f"{s.name:>10}" for s in shown))
        for item in mapping:
            counts = "".join(f"{item.rows_by_scenario.get(s.code, 0):>10,}" for s in shown)
            out(f"  {item.day} -> {_month(item.period):<8}{counts}")
        totals = "".join(
            f"{sum(item.rows_by_scenario.get(s.code, 0) for item in mapping):>10,}" for s in shown
        )
        out(f"  {'rows':<22}{totals}\n")
        out("Periods:")
        by_scenario = rows_by_scenario_period(export, rule)
        for scenario in scenarios:
            periods = by_scenario.get(scenario.code)
            if periods:
                span = f"{_month(min(periods))} to {_month(max(periods))}"
                out(f"  {scenario.name}: {len(periods)} periods, {span}")
            else:
                out(f"  {scenario.name}: no rows")
        self._warnings(export_warnings(export, rule))
        out("Preview only: nothing was written.")

    def _import(self, folder: Path, rule: PeriodRule) -> None:
        config = {"path": str(folder), "period_rule": rule.value}
        source = DataSource.objects.filter(slug=SOURCE_SLUG).first()
        previous = dict(source.config) if source else None
        source, _created = DataSource.objects.update_or_create(
            slug=SOURCE_SLUG,
            defaults={"name": SOURCE_NAME, "kind": DataSource.Kind.ADVENTUREWORKS, "config": config},
        )
        try:
            run = refresh(source_slug=SOURCE_SLUG, trigger=RefreshRun.Trigger.COMMAND)
        except RefreshInProgress as busy:
            raise CommandError(str(busy)) from None
        if run.status != RefreshRun.Status.SUCCEEDED:
            if previous is not None:  # the nightly refresh keeps the folder and rule that last worked
                source.config = previous
                source.save(update_fields=["config"])
            self._rejected([error["message"] for error in run.errors], run.rows_rejected or len(run.errors))

        step = next(step for step in run.steps if step.get("source") == SOURCE_SLUG)
        out = self.stdout.write
        out(
            f"Imported {folder} as data source '{SOURCE_SLUG}' with the period rule {rule}: "
            f"run {run.pk} {run.status}, loaded in {step['seconds']:.1f} s."
        )
        out(
            f"Rows read {step['rows_read']:,}; inserted {step['rows_inserted']:,}; "
            f"updated {step['rows_updated']:,}; deleted {step['rows_deleted']:,}; "
            f"unchanged {step['rows_unchanged']:,}."
        )
        out("Periods loaded:")
        for model, label in ((FinancialFact, "finance"), (OperationalFact, "call centre")):
            spans = (
                model.objects.filter(source=source)
                .values("scenario__name")
                .annotate(periods=Count("period", distinct=True), first=Min("period"), last=Max("period"))
                .annotate(facts=Count("id"))
                .order_by("scenario__name")
            )
            for span in spans:
                out(
                    f"  {label}, {span['scenario__name']}: {span['periods']} period(s), "
                    f"{_month(span['first'])} to {_month(span['last'])} ({span['facts']:,} facts)"
                )
        rates = CurrencyRate.objects.filter(source=source).aggregate(
            rates=Count("id"),
            currencies=Count("currency", distinct=True),
            first=Min("period"),
            last=Max("period"),
        )
        if rates["rates"]:
            out(
                f"Currency rates: {rates['rates']:,} monthly rates for {rates['currencies']} currencies, "
                f"{_month(rates['first'])} to {_month(rates['last'])}."
            )
        # The standard KPI library on AdventureWorks' accounts; recompute if it added anything.
        library = install_library("adventureworks")
        if library.measures_created or library.measures_updated or library.kpis_created:
            refresh(source_slug=SOURCE_SLUG, trigger=RefreshRun.Trigger.COMMAND)
        out(
            f"KPIs: {KPI.objects.filter(is_active=True).count()} active; the library needs data this export "
            f"lacks for: {', '.join(s.split(':')[0] for s in library.skipped) or 'none'}."
        )
        goals = install_goals("adventureworks")
        out(
            f"Goals: {len(goals.goals_created) + len(goals.goals_updated)} with {goals.links} KPI links; "
            f"{KPIDriver.objects.count()} driver links between KPIs."
        )
        self._warnings([warning["message"] for warning in run.warnings])

    def _warnings(self, warnings: list[str]) -> None:
        self.stdout.write(f"\nWarnings ({len(warnings)}):" if warnings else "\nNo warnings.")
        for warning in warnings:
            self.stdout.write(f"  - {warning}")

    def _rejected(self, messages: list[str], total: int) -> NoReturn:
        for message in messages:
            self.stderr.write(f"  {message}")
        more = f" (the first {len(messages)} are listed)" if total > len(messages) else ""
        raise CommandError(f"Import rejected: {total} problem(s){more}; nothing was loaded.")
