"""Targets imported from a CSV or XLSX file, all or nothing.

Columns (a header row, any order, case-insensitive): ``kpi`` (code), ``period`` (YYYY-MM or
YYYY-MM-DD, the first month of the period), ``value``, and optionally ``grain`` (month,
quarter or year; default month) and ``entity`` (code or name; empty means all entities).
Every row is checked first; any problem rejects the whole file with its row and column, and
nothing is written. Re-importing the same file changes nothing (targets are unique per KPI,
entity, grain and period, and a row replaces the stored value).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.db import transaction

from finops.errors import ImportRejected, RowError
from finops.models import Entity
from finops.periods import grain_start
from finops.sources.tabular import CSV, XLSX, TableOptions, open_table
from kpis.models import KPI, Target

MAX_BYTES = 20 * 1024 * 1024
MAX_ROWS = 100_000
# An XLSX is a zip: refuse one that would inflate past this (a "zip bomb") before opening it.
# Reading (encodings, workbooks, bombs) is shared with the file data source: finops.sources.tabular.
MAX_XLSX_UNCOMPRESSED = 200 * 1024 * 1024
REQUIRED = ("kpi", "period", "value")
OPTIONAL = ("grain", "entity")


@dataclass
class TargetImportResult:
    rows: int
    created: int
    updated: int
    unchanged: int


def import_targets(content: bytes, *, filename: str) -> TargetImportResult:
    """Validate every row of a CSV or XLSX file, then store its targets in one transaction."""
    if len(content) > MAX_BYTES:
        raise ImportRejected([RowError(filename, None, None, None, f"larger than {MAX_BYTES // 2**20} MB")])
    if not content.strip():
        raise ImportRejected([RowError(filename, None, None, None, "the file is empty")])
    rows = _read_rows(content, filename)
    targets, errors = _validate(rows, filename)
    if errors:
        raise ImportRejected(errors)
    created = updated = unchanged = 0
    with transaction.atomic():
        for (kpi, entity, grain, period), value in targets.items():
            existing = Target.objects.filter(kpi=kpi, entity=entity, grain=grain, period=period).first()
            if existing is None:
                Target.objects.create(
                    kpi=kpi,
                    entity=entity,
                    grain=grain,
                    period=period,
                    value=value,
                    origin=Target.Origin.IMPORTED,
                )
                created += 1
            elif existing.value != value:
                existing.value, existing.origin = value, Target.Origin.IMPORTED
                existing.save(update_fields=["value", "origin"])
                updated += 1
            else:
                unchanged += 1
    return TargetImportResult(rows=len(targets), created=created, updated=updated, unchanged=unchanged)


def _read_rows(content: bytes, filename: str) -> list[tuple[int, dict[str, str]]]:
    """The file's data rows as (row number, cells by lower-case column name), read through the
    shared safe reader (encoding, workbook and zip-bomb checks: finops.sources.tabular)."""
    options = TableOptions(
        format=XLSX if filename.lower().endswith(".xlsx") else CSV,
        delimiter=None,  # sniffed: , ; tab or |
        max_uncompressed=MAX_XLSX_UNCOMPRESSED,
        decode_hint="save it as UTF-8 CSV",
    )
    with open_table(io.BytesIO(content), name=filename, options=options) as table:
        header = [name.lower() for name in table.header]
        missing = [name for name in REQUIRED if name not in header]
        if missing:
            raise ImportRejected(
                [
                    RowError(
                        filename,
                        table.header_row,
                        None,
                        ", ".join(table.header),
                        f"missing column(s) {', '.join(missing)}; expected {', '.join(REQUIRED + OPTIONAL)}",
                    )
                ]
            )
        rows, errors = [], []
        for number, cells in table.rows:
            if len(rows) >= MAX_ROWS:
                raise ImportRejected([RowError(filename, None, None, None, f"more than {MAX_ROWS:,} rows")])
            texts = [_text(cell) for cell in cells]
            extra = [text for text in texts[len(header) :] if text.strip()]
            if extra:
                reason = f"{len(texts)} cells but {len(header)} columns"
                errors.append(RowError(filename, number, None, ", ".join(extra), reason))
            rows.append(
                (number, {name: texts[i].strip() if i < len(texts) else "" for i, name in enumerate(header)})
            )
    if errors:
        raise ImportRejected(errors)
    return rows


def _text(cell) -> str:
    if cell is None:
        return ""
    return cell.isoformat() if isinstance(cell, date) else str(cell)


def _validate(rows: list[tuple[int, dict[str, str]]], filename: str):
    kpis = {kpi.code: kpi for kpi in KPI.objects.all()}
    entities = {e.code.lower(): e for e in Entity.objects.all()} | {
        e.name.lower(): e for e in Entity.objects.all()
    }
    fiscal_start = settings.FISCAL_YEAR_START_MONTH
    targets: dict[tuple, Decimal] = {}
    errors: list[RowError] = []

    def bad(row: int, column: str, value: str, reason: str) -> None:
        errors.append(RowError(filename, row, column, value, reason))

    for number, row in rows:
        kpi = kpis.get(row["kpi"])
        if kpi is None:
            bad(number, "kpi", row["kpi"], "no KPI with this code")
        grain = (row.get("grain") or "month").lower()
        if grain not in ("month", "quarter", "year"):
            bad(number, "grain", row.get("grain", ""), "use month, quarter or year")
            grain = "month"
        period = _period(row["period"])
        if period is None:
            bad(number, "period", row["period"], "not a month (use YYYY-MM or YYYY-MM-DD)")
        elif grain_start(period, grain, fiscal_start) != period:
            start = grain_start(period, grain, fiscal_start)
            bad(number, "period", row["period"], f"a {grain} starts in {start:%Y-%m}, not here")
        entity = None
        if row.get("entity"):
            entity = entities.get(row["entity"].lower())
            if entity is None:
                bad(number, "entity", row["entity"], "no entity with this code or name")
        try:
            value = Decimal(row["value"].replace(",", "")) if row["value"] else None
        except InvalidOperation:
            value = None
        if value is None or not value.is_finite() or abs(value) >= Decimal("1e14"):
            bad(number, "value", row["value"], "not a number")
        if kpi is None or period is None or value is None or not value.is_finite():
            continue
        key = (kpi, entity, grain, period)
        if key in targets:
            bad(number, "period", row["period"], "a second target for the same KPI, entity, grain and period")
        targets[key] = value
    return targets, errors


def _period(text: str) -> date | None:
    try:
        if len(text) == 7:
            return date.fromisoformat(text + "-01")
        day = date.fromisoformat(text[:10])
    except ValueError:
        return None
    return day if day.day == 1 else None
