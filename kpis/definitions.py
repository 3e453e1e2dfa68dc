"""KPI definitions as code: export every measure and KPI to YAML, import them back, and install
the standard library for a dataset.

The YAML format is the one the library files use (``kpis/library/``). Import is all or
nothing: the whole file is checked first (fields, types, references, every formula, cycles),
and any problem is reported with its place in the file (``kpis[3].formula``); only a clean file
is written, in one transaction, through the same service as the admin (so changes are recorded
in each KPI's history). Exporting and importing again recreates identical definitions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction

from finops.models import Account, Department, OperationalSeries, Scenario
from kpis.formula import FormulaError, evaluation_order, find_cycle, parse, validate
from kpis.models import KPI, Measure, TimeBehaviour
from kpis.services import MEASURE_UNITS, kpi_save

FORMAT_VERSION = 1
LIBRARY_DIR = Path(__file__).resolve().parent / "library"
MAX_FILE_BYTES = 5 * 1024 * 1024

MEASURE_FIELDS = {
    "code": "str",
    "name": "str",
    "description": "str?",
    "kind": "str",
    "accounts": "list?",
    "account": "str?",  # shorthand for accounts: [code]
    "series": "str?",
    "department": "str?",
    "scenario": "str?",
    "time_behaviour": "str",
    "unit": "str?",
    "multiplier": "decimal?",
}
KPI_FIELDS = {
    "code": "str",
    "name": "str",
    "description": "str?",
    "convention": "str?",
    "owner_department": "str?",
    "owner_side": "str?",  # library files: the top department of that side
    "owner": "str?",
    "unit": "str",
    "direction": "str?",
    "formula": "str",
    "decimals": "int?",
    "is_active": "bool?",
    "is_library": "bool?",
    "sort_order": "int?",
    "target_rule": "str?",
    "target_rule_pct": "decimal?",
    "green_tolerance_pct": "decimal?",
    "amber_tolerance_pct": "decimal?",
    "band_low": "decimal?",
    "band_high": "decimal?",
}


class DefinitionsRejected(Exception):
    def __init__(self, problems: list[str]):
        self.problems = problems
        listed = "\n".join(f"  {p}" for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(
            f"Definitions rejected, nothing was changed ({len(problems)} problem(s)):\n{listed}{more}"
        )


@dataclass
class ImportReport:
    measures_created: list[str] = field(default_factory=list)
    measures_updated: list[str] = field(default_factory=list)
    kpis_created: list[str] = field(default_factory=list)
    kpis_updated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


# --- export -------------------------------------------------------------------------------


def export_definitions() -> dict[str, Any]:
    measures = []
    for m in Measure.objects.prefetch_related("accounts").select_related("series", "department", "scenario"):
        measures.append(
            {
                "code": m.code,
                "name": m.name,
                "description": m.description,
                "kind": m.kind,
                "accounts": sorted(a.code for a in m.accounts.all()),
                "series": m.series.code if m.series else None,
                "department": m.department.code if m.department else None,
                "scenario": m.scenario.code if m.scenario else None,
                "time_behaviour": m.time_behaviour,
                "unit": m.unit,
                "multiplier": _dec(m.multiplier),
            }
        )
    kpis = []
    for k in KPI.objects.select_related("owner_department", "owner").order_by("sort_order", "code"):
        kpis.append(
            {
                "code": k.code,
                "name": k.name,
                "description": k.description,
                "convention": k.convention,
                "owner_department": k.owner_department.code if k.owner_department else None,
                "owner": k.owner.get_username() if k.owner else None,
                "unit": k.unit,
                "direction": k.direction,
                "formula": k.formula,
                "decimals": k.decimals,
                "is_active": k.is_active,
                "is_library": k.is_library,
                "sort_order": k.sort_order,
                "target_rule": k.target_rule,
                "target_rule_pct": _dec(k.target_rule_pct),
                "green_tolerance_pct": _dec(k.green_tolerance_pct),
                "amber_tolerance_pct": _dec(k.amber_tolerance_pct),
                "band_low": _dec(k.band_low),
                "band_high": _dec(k.band_high),
            }
        )
    return {"version": FORMAT_VERSION, "measures": measures, "kpis": kpis}


def export_yaml() -> str:
    return yaml.safe_dump(export_definitions(), sort_keys=False, allow_unicode=True, width=100)


def _dec(value: Decimal | None) -> str | None:
    return None if value is None else format(value.normalize(), "f")


# --- import -------------------------------------------------------------------------------


def load_yaml(text: str, *, name: str = "file") -> dict[str, Any]:
    if len(text.encode()) > MAX_FILE_BYTES:
        raise DefinitionsRejected([f"{name}: larger than {MAX_FILE_BYTES // 1024 // 1024} MB"])
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise DefinitionsRejected(
            [f"{name}: not valid YAML{where}: {getattr(error, 'problem', error)}"]
        ) from None
    if not isinstance(data, dict):
        raise DefinitionsRejected([f"{name}: expected a mapping with 'measures' and 'kpis'"])
    return data


def import_definitions(
    data: dict[str, Any], *, user=None, only_available: bool = False, library: bool = False
) -> ImportReport:
    """Check everything in ``data``, then create or update its measures and KPIs by code.

    ``only_available`` skips (and reports) KPIs whose formulas name measures that neither the
    file nor the database has, instead of refusing the file: used to enable the library.
    """
    problems: list[str] = []
    version = data.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        problems.append(f"version: {version!r} is not supported (expected {FORMAT_VERSION})")
    unknown_top = set(data) - {"version", "measures", "kpis"}
    problems.extend(f"{key}: unknown section" for key in sorted(unknown_top))
    measures = check_rows(data, "measures", MEASURE_FIELDS, problems)
    kpis = check_rows(data, "kpis", KPI_FIELDS, problems)
    resolved_measures = [_resolve_measure(i, row, problems) for i, row in enumerate(measures)]
    _check_duplicates("measures", measures, problems)
    _check_duplicates("kpis", kpis, problems)

    report = ImportReport()
    measure_units = dict(Measure.objects.values_list("code", "unit"))
    measure_units.update({row["code"]: row.get("unit") or "currency" for row in measures})
    stored_kpis = dict(KPI.objects.values_list("code", "formula"))
    units = {code: MEASURE_UNITS.get(unit) for code, unit in measure_units.items()}
    units.update(dict(KPI.objects.values_list("code", "unit")))
    units.update({row["code"]: row["unit"] for row in kpis})
    formulas = {}
    for code, text in stored_kpis.items():
        try:
            formulas[code] = parse(text)
        except FormulaError:
            continue
    accepted = []
    known = set(measure_units) | set(stored_kpis) | {row["code"] for row in kpis}
    if only_available:  # a KPI over a skipped KPI is skipped too (gross_margin needs cogs)
        known = _computable(kpis, set(measure_units) | set(stored_kpis))
    for i, row in enumerate(kpis):
        try:
            formula = parse(row["formula"])
        except FormulaError as error:
            problems.append(f"kpis[{i}] ({row['code']}).formula: {error}")
            continue
        missing = formula.names - known
        if missing and only_available:
            report.skipped.append(f"{row['code']}: needs {', '.join(sorted(missing))}")
            continue
        try:
            validate(formula, known_names=known, units=units)
        except FormulaError as error:
            problems.append(f"kpis[{i}] ({row['code']}).formula: {error}")
            continue
        formulas[row["code"]] = formula
        accepted.append((i, row))
    cycle = find_cycle(formulas)
    if cycle:
        place = next(
            (f"kpis[{i}] ({row['code']}).formula" for i, row in accepted if row["code"] in cycle), "kpis"
        )
        problems.append(f"{place}: the formulas form a cycle: " + " → ".join(cycle))
    for i, row in accepted:
        if row["code"] in measure_units:
            problems.append(
                f"kpis[{i}].code: {row['code']!r} is already a measure's code "
                "(formulas could not tell them apart)"
            )
    resolved_kpis = [(i, _resolve_kpi(i, row, problems, library=library)) for i, row in accepted]
    if problems:
        raise DefinitionsRejected(problems)
    # Save KPIs after the KPIs their formulas name, so every save sees its inputs.
    rank = {code: n for n, code in enumerate(evaluation_order(formulas))}
    resolved_kpis.sort(key=lambda item: (rank.get(item[1]["code"], 0), item[0]))
    if problems:
        raise DefinitionsRejected(problems)

    with transaction.atomic():
        for fields, account_ids in resolved_measures:
            measure = Measure.objects.filter(code=fields["code"]).first()
            if measure is None:
                measure = Measure.objects.create(**fields)
                measure.accounts.set(account_ids)
                report.measures_created.append(measure.code)
                continue
            stored_accounts = set(measure.accounts.values_list("pk", flat=True))
            # The library adds another chart's accounts to a shared measure; a file replaces them.
            wanted_accounts = stored_accounts | set(account_ids) if library else set(account_ids)
            changed = [name for name, value in fields.items() if getattr(measure, name) != value]
            if changed or wanted_accounts != stored_accounts:
                for name in changed:
                    setattr(measure, name, fields[name])
                measure.save()
                measure.accounts.set(wanted_accounts)
                report.measures_updated.append(measure.code)
        for _, fields in resolved_kpis:
            kpi = KPI.objects.filter(code=fields["code"]).first()
            created = kpi is None
            if created:
                kpi = KPI(code=fields["code"])
            elif library:
                fields = {"code": fields["code"]}  # an installed library KPI keeps the analyst's edits
            for name, value in fields.items():
                setattr(kpi, name, value)
            change = kpi_save(kpi=kpi, user=user)
            if created:
                report.kpis_created.append(kpi.code)
            elif change is not None:
                report.kpis_updated.append(kpi.code)
    return report


def import_yaml(text: str, *, user=None, name: str = "file") -> ImportReport:
    return import_definitions(load_yaml(text, name=name), user=user)


def install_library(dataset: str, *, user=None) -> ImportReport:
    """Create the dataset's measures and enable every standard KPI they support."""
    measure_file = LIBRARY_DIR / f"{dataset}.yaml"
    if not measure_file.exists():
        choices = sorted(p.stem for p in LIBRARY_DIR.glob("*.yaml") if p.stem != "standard")
        raise DefinitionsRejected([f"no measure file for dataset {dataset!r} (known: {', '.join(choices)})"])
    measures = load_yaml(measure_file.read_text(), name=measure_file.name)
    standard = load_yaml((LIBRARY_DIR / "standard.yaml").read_text(), name="standard.yaml")
    for order, row in enumerate(standard["kpis"]):
        row.setdefault("is_library", True)
        row.setdefault("sort_order", order)
    data = {"version": FORMAT_VERSION, "measures": measures["measures"], "kpis": standard["kpis"]}
    return import_definitions(data, user=user, only_available=True, library=True)


# --- checking -----------------------------------------------------------------------------


def check_rows(data: dict, section: str, spec: dict[str, str], problems: list[str]) -> list[dict]:
    rows = data.get(section) or []
    if not isinstance(rows, list):
        problems.append(f"{section}: expected a list")
        return []
    good = []
    for i, row in enumerate(rows):
        where = f"{section}[{i}]"
        if not isinstance(row, dict):
            problems.append(f"{where}: expected a mapping of fields")
            continue
        ok = True
        for key in sorted(set(row) - set(spec)):
            problems.append(f"{where}.{key}: unknown field (known: {', '.join(spec)})")
            ok = False
        for key, kind in spec.items():
            value = row.get(key)
            optional = kind.endswith("?")
            if value is None:
                if not optional:
                    problems.append(f"{where}.{key}: required")
                    ok = False
                continue
            error = _type_error(value, kind.rstrip("?"))
            if error:
                problems.append(f"{where}.{key}: {error}")
                ok = False
        if ok:
            good.append(row)
    return good


def _type_error(value: Any, kind: str) -> str | None:
    if kind == "str" and not isinstance(value, str):
        return f"expected text, got {value!r}"
    if kind == "int" and (not isinstance(value, int) or isinstance(value, bool)):
        return f"expected a whole number, got {value!r}"
    if kind == "bool" and not isinstance(value, bool):
        return f"expected true or false, got {value!r}"
    if kind == "list" and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return f"expected a list of codes, got {value!r}"
    if kind == "decimal":
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            return f"expected a number, got {value!r}"
        if not number.is_finite():
            return f"expected a finite number, got {value!r}"
    return None


def _check_duplicates(section: str, rows: list[dict], problems: list[str]) -> None:
    seen: set[str] = set()
    for i, row in enumerate(rows):
        if row["code"] in seen:
            problems.append(f"{section}[{i}].code: {row['code']!r} appears twice")
        seen.add(row["code"])


def _lookup(model, code: str | None, where: str, problems: list[str]):
    if code is None:
        return None
    found = model.objects.filter(code=code).first()
    if found is None:
        problems.append(f"{where}: no {model._meta.verbose_name} with code {code!r}")
    return found


def _resolve_measure(i: int, row: dict, problems: list[str]) -> tuple[dict, list[int]]:
    where = f"measures[{i}] ({row['code']})"
    kind = row["kind"]
    if kind not in Measure.Kind.values:
        problems.append(f"{where}.kind: {kind!r} is not one of {', '.join(Measure.Kind.values)}")
    if row["time_behaviour"] not in TimeBehaviour.values:
        problems.append(f"{where}.time_behaviour: use flow or balance, not {row['time_behaviour']!r}")
    codes = list(row.get("accounts") or []) + ([row["account"]] if row.get("account") else [])
    accounts = {a.code: a.pk for a in Account.objects.filter(code__in=codes)}
    for code in codes:
        if code not in accounts:
            problems.append(f"{where}.accounts: no account with code {code!r}")
    series = _lookup(OperationalSeries, row.get("series"), f"{where}.series", problems)
    if kind == Measure.Kind.ACCOUNT and not codes:
        problems.append(f"{where}: an account roll-up needs at least one account")
    if kind != Measure.Kind.ACCOUNT and series is None and not row.get("series"):
        problems.append(f"{where}.series: required for a series measure")
    fields = {
        "code": row["code"],
        "name": row["name"],
        "description": row.get("description") or "",
        "kind": kind,
        "series": series,
        "department": _lookup(Department, row.get("department"), f"{where}.department", problems),
        "scenario": _lookup(Scenario, row.get("scenario"), f"{where}.scenario", problems),
        "time_behaviour": row["time_behaviour"],
        "unit": row.get("unit") or "currency",
        "multiplier": Decimal(str(_given(row, "multiplier", "1"))),
    }
    _check_fields(Measure(**fields), where, problems, checked=("kind", "time_behaviour"))
    return fields, [accounts[c] for c in codes if c in accounts]


def _resolve_kpi(i: int, row: dict, problems: list[str], *, library: bool) -> dict:
    where = f"kpis[{i}] ({row['code']})"
    for name, choices in (
        ("unit", KPI.Unit.values),
        ("direction", KPI.Direction.values),
        ("target_rule", KPI.TargetRule.values),
    ):
        if row.get(name) is not None and row[name] not in choices:
            problems.append(f"{where}.{name}: {row[name]!r} is not one of {', '.join(choices)}")
    owner_department = _lookup(Department, row.get("owner_department"), f"{where}.owner_department", problems)
    if owner_department is None and row.get("owner_side"):
        owner_department = (
            Department.objects.filter(side=row["owner_side"], parent__isnull=True).order_by("code").first()
        )
    owner = None
    if row.get("owner"):
        owner = get_user_model().objects.filter(username=row["owner"]).first()
        if owner is None:
            problems.append(f"{where}.owner: no user {row['owner']!r}")
    defaults = KPI()
    fields = {
        "name": row["name"],
        "description": row.get("description") or "",
        "convention": row.get("convention") or "",
        "owner_department": owner_department,
        "owner": owner,
        "unit": row["unit"],
        "direction": row.get("direction") or defaults.direction,
        "formula": row["formula"],
        "decimals": _given(row, "decimals", defaults.decimals),
        "is_active": _given(row, "is_active", True),
        "is_library": _given(row, "is_library", library),
        "sort_order": _given(row, "sort_order", 0),
        "target_rule": row.get("target_rule") or defaults.target_rule,
    }
    for name in ("target_rule_pct", "band_low", "band_high"):
        fields[name] = Decimal(str(row[name])) if row.get(name) is not None else None
    for name in ("green_tolerance_pct", "amber_tolerance_pct"):
        fields[name] = Decimal(str(row[name])) if row.get(name) is not None else getattr(defaults, name)
    if fields["direction"] == KPI.Direction.BAND and (
        fields["band_low"] is None or fields["band_high"] is None
    ):
        problems.append(f"{where}: a 'band' KPI needs band_low and band_high")
    _check_fields(
        KPI(code=row["code"], **fields), where, problems, checked=("unit", "direction", "target_rule")
    )
    return {"code": row["code"], **fields}


def _computable(kpis: list[dict], available: set[str]) -> set[str]:
    """``available`` and the codes of the KPIs whose formulas need only those (or each other)."""
    needs = {}
    for row in kpis:
        try:
            needs[row["code"]] = parse(row["formula"]).names - {row["code"]}  # a cycle is reported
        except FormulaError:
            needs[row["code"]] = set()  # reported when the row is checked
    known = set(available)
    while ready := [code for code, names in needs.items() if names <= known]:
        known.update(ready)
        for code in ready:
            del needs[code]
    return known


def _given(row: dict, key: str, default: Any) -> Any:
    """The row's value, or the default when the field is left out or empty (``key: ~``)."""
    value = row.get(key)
    return default if value is None else value


def _check_fields(instance, where: str, problems: list[str], *, checked: tuple[str, ...]) -> None:
    """The model's own field rules (code pattern, text length, digits, whole numbers >= 0), so a
    file can't store what the admin would refuse; ``checked`` fields are reported already."""
    relations = [f.name for f in instance._meta.fields if f.is_relation]
    try:
        instance.clean_fields(exclude=[*checked, *relations])
    except ValidationError as error:
        for name, messages in error.message_dict.items():
            problems.extend(f"{where}.{name}: {message}" for message in messages)
