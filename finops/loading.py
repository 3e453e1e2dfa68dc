"""Writing facts: the one place where fact tables change.

A load replaces one source's facts for the (scenario, period) pairs it covers:

- rows of the load that share a natural key are added up (both rows are real and count);
- a key already stored with the same numbers is left alone, a changed one is updated, a new
  one inserted, and a stored key the load no longer has (removed at the source) is deleted;
- facts of other sources, and of periods the load does not cover, are never touched.

So loading the same input twice changes nothing. Callers validate every row first and wrap
the call in ``transaction.atomic()`` together with the run record, so a load is all or nothing.

Two paths, one meaning:

- the portable path (SQLite, and small loads anywhere) diffs in Python through the ORM;
- on PostgreSQL a load of at least ``FINOPS_LOAD_COPY_MIN_ROWS`` keys (default 20,000) is
  written with ``COPY`` into a temporary staging table and applied in three set-based
  statements (delete the keys the load no longer has, update the changed ones, insert the new
  ones), all inside the caller's transaction. ``replace_staged`` applies a staging table that
  a caller filled itself (the file source does, straight from the file).

Both give the same facts and the same ``LoadResult`` for the same input (tested side by side).

Every function here that changes financial facts also recomputes ``LedgerTotal`` (what the
metric engine reads) for the months it changed, in the same transaction. Loads hold the
dimension tables in SHARE mode (``lock_dimensions``): fact tables have no foreign-key
constraints, and that lock is what keeps the ids a load looked up valid until it commits.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from django.conf import settings
from django.db import connection, models, transaction

from finops.models import (
    Account,
    DataSource,
    Department,
    Entity,
    FinancialFact,
    LedgerTotal,
    OperationalFact,
    OperationalSeries,
    PeriodCoverage,
    Scenario,
)

BATCH_SIZE = 5000
ORM_UPDATE_BATCH = 500  # rows per bulk_update (one CASE branch per row and field)
COPY_MIN_ROWS = 20_000  # default of settings.FINOPS_LOAD_COPY_MIN_ROWS
COPY_LINES_PER_CHUNK = 10_000
LOAD_WORK_MEM = "256MB"  # for the hash joins of a large load, restored afterwards


@dataclass
class LoadResult:
    rows_read: int = 0
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_deleted: int = 0
    rows_unchanged: int = 0
    changed_periods: set[date] = field(default_factory=set)  # months where any fact changed
    method: str = "rows"  # "bulk" when a file was checked and mapped in the database
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step, where measured

    def add(self, other: LoadResult) -> None:
        self.changed_periods |= other.changed_periods
        self.rows_read += other.rows_read
        self.rows_inserted += other.rows_inserted
        self.rows_updated += other.rows_updated
        self.rows_deleted += other.rows_deleted
        self.rows_unchanged += other.rows_unchanged


# (period, entity_id, department_id, scenario_id, account_id) -> amount
FinancialKey = tuple[date, int, int, int, int]
# (date, entity_id, scenario_id, series_id, dimension) -> (value, count)
OperationalKey = tuple[date, int, int, int, str]


DIMENSIONS = (DataSource, Entity, Department, Scenario, Account, OperationalSeries)


def lock_dimensions() -> None:
    """Hold the tables facts refer to in SHARE mode until the transaction ends: their rows can
    be read but not inserted, changed or deleted meanwhile (such a write waits), so the ids a
    load looked up stay valid until it commits. This is what keeps fact references right in
    place of per-row foreign-key checks (see ``finops.models.FACT_REFERENCE``). Call inside a
    transaction, before looking codes up; taking the locks again is free."""
    lock_for_reading(*DIMENSIONS)


def lock_for_reading(*tables: type[models.Model]) -> None:
    """Hold these models' tables in SHARE mode until the transaction ends (see
    ``lock_dimensions``; the metric engine holds its definitions so). Nothing to do on SQLite,
    where a writing transaction already excludes every other writer."""
    if connection.vendor != "postgresql":
        return
    names = ", ".join(model._meta.db_table for model in tables)
    with connection.cursor() as cursor:
        cursor.execute(f"LOCK TABLE {names} IN SHARE MODE")


def wait_for_readers(model: type[models.Model]) -> None:
    """Before deleting rows of a table that loads or recomputes hold in SHARE mode: wait for
    them to commit first (ROW EXCLUSIVE waits for SHARE), while holding no row yet. Otherwise
    the cascade would delete the rows' values, then wait for the table, while the recompute
    waits for those values: a deadlock, which PostgreSQL breaks by failing one side."""
    if connection.vendor == "postgresql" and connection.in_atomic_block:
        with connection.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {model._meta.db_table} IN ROW EXCLUSIVE MODE")


def load_financial_facts(
    *, source: DataSource, rows: Iterable[tuple[date, int, int, int, int, Decimal]]
) -> LoadResult:
    """Replace ``source``'s financial facts for the scenario-periods present in ``rows``.

    Each row is (period, entity_id, department_id, scenario_id, account_id, amount); the
    period is the first day of a month.
    """
    with transaction.atomic():  # a savepoint in the caller's transaction, if there is one
        lock_dimensions()
        return _load_financial_facts(source, rows)


def _load_financial_facts(source: DataSource, rows: Iterable[tuple]) -> LoadResult:
    incoming: dict[FinancialKey, Decimal] = {}
    read = 0
    for period, entity_id, department_id, scenario_id, account_id, amount in rows:
        read += 1
        key = (period, entity_id, department_id, scenario_id, account_id)
        incoming[key] = incoming.get(key, Decimal(0)) + amount
    if use_copy(len(incoming)):
        result = _replace_by_copy(
            FINANCIAL_SPEC, source, ((*key, amount) for key, amount in incoming.items())
        )
        result.rows_read = read
        return result
    scope = {(key[3], key[0]) for key in incoming}
    result = _replace(
        model=FinancialFact,
        source=source,
        scope=scope,
        key_fields=("period", "entity_id", "department_id", "scenario_id", "account_id"),
        value_fields=("amount",),
        incoming={key: (amount,) for key, amount in incoming.items()},
    )
    result.rows_read = read
    return result


def load_operational_facts(
    *, source: DataSource, rows: Iterable[tuple[date, int, int, int, str, Decimal, int]]
) -> LoadResult:
    """Replace ``source``'s operational facts for the scenario-periods present in ``rows``.

    Each row is (date, entity_id, scenario_id, series_id, dimension, value, count).
    """
    with transaction.atomic():
        lock_dimensions()
        return _load_operational_facts(source, rows)


def _load_operational_facts(source: DataSource, rows: Iterable[tuple]) -> LoadResult:
    incoming: dict[OperationalKey, tuple[Decimal, int]] = {}
    read = 0
    for day, entity_id, scenario_id, series_id, dimension, value, count in rows:
        read += 1
        key = (day, entity_id, scenario_id, series_id, dimension)
        old_value, old_count = incoming.get(key, (Decimal(0), 0))
        incoming[key] = (old_value + value, old_count + count)
    if use_copy(len(incoming)):
        rows = ((*key, *values) for key, values in incoming.items())
        result = _replace_by_copy(OPERATIONAL_SPEC, source, rows)
        result.rows_read = read
        return result
    scope = {(key[2], key[0].replace(day=1)) for key in incoming}
    result = _replace(
        model=OperationalFact,
        source=source,
        scope=scope,
        key_fields=("date", "entity_id", "scenario_id", "series_id", "dimension"),
        value_fields=("value", "count"),
        incoming=incoming,
        derived={"period": lambda key: key[0].replace(day=1)},
    )
    result.rows_read = read
    return result


def _replace(
    *,
    model: type[models.Model],
    source: DataSource,
    scope: set[tuple[int, date]],
    key_fields: tuple[str, ...],
    value_fields: tuple[str, ...],
    incoming: dict,
    derived: dict | None = None,
) -> LoadResult:
    result = LoadResult()
    existing: dict[tuple, tuple[int, tuple]] = {}
    periods_by_scenario: dict[int, set[date]] = {}
    for scenario_id, period in scope:
        periods_by_scenario.setdefault(scenario_id, set()).add(period)
    for scenario_id, periods in periods_by_scenario.items():
        stored = model.objects.filter(source=source, scenario_id=scenario_id, period__in=sorted(periods))
        for row in stored.values_list("id", *key_fields, *value_fields).iterator(chunk_size=BATCH_SIZE):
            key = tuple(row[1 : 1 + len(key_fields)])
            existing[key] = (row[0], tuple(row[1 + len(key_fields) :]))

    to_insert, to_update = [], []
    period_of = derived.get("period") if derived else (lambda key: key[0])
    for key, values in incoming.items():
        if not isinstance(values, tuple):
            values = (values,)
        found = existing.pop(key, None)
        if found is None:
            fields = dict(zip(key_fields, key, strict=True)) | dict(zip(value_fields, values, strict=True))
            for name, compute in (derived or {}).items():
                fields[name] = compute(key)
            to_insert.append(model(source=source, **fields))
            result.changed_periods.add(period_of(key))
        elif _differs(found[1], values):
            result.changed_periods.add(period_of(key))
            obj = model(id=found[0])
            for name, value in zip(value_fields, values, strict=True):
                setattr(obj, name, value)
            to_update.append(obj)
        else:
            result.rows_unchanged += 1

    model.objects.bulk_create(to_insert, batch_size=BATCH_SIZE)
    if to_update:
        _update(model, value_fields, to_update)
    stale_ids = [found[0] for found in existing.values()]
    result.changed_periods.update(period_of(key) for key in existing)
    for start in range(0, len(stale_ids), BATCH_SIZE):
        model.objects.filter(id__in=stale_ids[start : start + BATCH_SIZE]).delete()
    result.rows_inserted = len(to_insert)
    result.rows_updated = len(to_update)
    result.rows_deleted = len(stale_ids)
    if model is FinancialFact:
        update_ledger_totals(result.changed_periods)
    return result


def _update(model: type[models.Model], value_fields: tuple[str, ...], objects: list[models.Model]) -> None:
    """Write the value fields of these rows, by id.

    On PostgreSQL one UPDATE ... FROM unnest(arrays) per batch: bulk_update's CASE WHEN id = ...
    with thousands of branches is slow to plan, and PostgreSQL's JIT can take minutes to
    compile it. Elsewhere bulk_update, in batches small enough for that not to matter."""
    if connection.vendor != "postgresql":
        model.objects.bulk_update(objects, list(value_fields), batch_size=ORM_UPDATE_BATCH)
        return
    meta = model._meta
    fields = [meta.get_field(name) for name in value_fields]
    arrays = ", ".join(
        [f"%s::{meta.pk.db_type(connection)}[]"] + [f"%s::{f.db_type(connection)}[]" for f in fields]
    )
    columns = ", ".join(f.column for f in fields)
    assignments = ", ".join(f"{f.column} = v.{f.column}" for f in fields)
    sql = (
        f"UPDATE {meta.db_table} AS t SET {assignments} "  # noqa: S608 - our own table and columns
        f"FROM unnest({arrays}) AS v (id, {columns}) WHERE t.{meta.pk.column} = v.id"
    )
    with connection.cursor() as cursor:
        for start in range(0, len(objects), BATCH_SIZE):
            batch = objects[start : start + BATCH_SIZE]
            params = [[obj.pk for obj in batch]]
            params += [
                [f.get_db_prep_save(getattr(obj, f.attname), connection) for obj in batch] for f in fields
            ]
            cursor.execute(sql, params)


def _differs(stored: tuple, new: tuple) -> bool:
    return any(Decimal(str(a)) != Decimal(str(b)) for a, b in zip(stored, new, strict=True))


# --- the PostgreSQL path: COPY into staging, then set-based statements -------------------------


@dataclass(frozen=True)
class StageSpec:
    """How one fact table is staged: the staging columns (the natural key without the source,
    then the values) and how the month of a staged row is found."""

    model: type[models.Model]
    table: str  # the temporary staging table's name
    columns: tuple[tuple[str, str], ...]  # (column, SQL type)
    keys: tuple[str, ...]
    values: tuple[str, ...]
    period: str  # SQL expression over the staging row ``s`` giving its month

    @property
    def fact_table(self) -> str:
        return self.model._meta.db_table

    @property
    def index_order(self) -> list[str]:
        """The staging columns in the order of the fact table's natural-key index (after the
        source): new facts inserted in that order go into the index in order, not at random."""
        unique = next(c for c in self.model._meta.constraints if isinstance(c, models.UniqueConstraint))
        return [self.model._meta.get_field(name).column for name in unique.fields if name != "source"]


FINANCIAL_SPEC = StageSpec(
    model=FinancialFact,
    table="finops_stage_financial",
    columns=(
        ("period", "date"),
        ("entity_id", "bigint"),
        ("department_id", "bigint"),
        ("scenario_id", "bigint"),
        ("account_id", "bigint"),
        ("amount", "numeric"),  # unbounded, as the ORM path compares
    ),
    keys=("period", "entity_id", "department_id", "scenario_id", "account_id"),
    values=("amount",),
    period="s.period",
)
OPERATIONAL_SPEC = StageSpec(
    model=OperationalFact,
    table="finops_stage_operational",
    columns=(
        ("date", "date"),
        ("entity_id", "bigint"),
        ("scenario_id", "bigint"),
        ("series_id", "bigint"),
        ("dimension", "text"),
        ("value", "numeric"),
        ("count", "bigint"),
    ),
    keys=("date", "entity_id", "scenario_id", "series_id", "dimension"),
    values=("value", "count"),
    period="date_trunc('month', s.date)::date",
)


def big_query_settings(cursor, work_mem: str = LOAD_WORK_MEM) -> Callable[[], None]:
    """Settings for big set-based statements in this transaction: ``work_mem`` for their hash
    tables, and no JIT compilation (far above its cost threshold, compiling them in every
    parallel worker costs more than it saves). Returns what puts the previous values back (a
    rolled-back savepoint puts them back by itself). Nothing to do outside PostgreSQL."""
    return local_settings(cursor, {"work_mem": work_mem, "jit": "off"})


def local_settings(cursor, values: dict[str, str]) -> Callable[[], None]:
    """Set these PostgreSQL settings for the rest of this transaction; returns what puts the
    previous values back. Nothing to do outside PostgreSQL."""
    if connection.vendor != "postgresql":
        return lambda: None
    names = list(values)
    cursor.execute(
        "SELECT "
        + ", ".join(["current_setting(%s)"] * len(names) + ["set_config(%s, %s, true)"] * len(names)),
        [*names, *(part for name in names for part in (name, values[name]))],
    )
    previous = cursor.fetchone()[: len(names)]
    return lambda: cursor.execute(
        "SELECT " + ", ".join(["set_config(%s, %s, true)"] * len(names)),
        [part for name, value in zip(names, previous, strict=True) for part in (name, value)],
    )


def copy_min_rows() -> int:
    return int(getattr(settings, "FINOPS_LOAD_COPY_MIN_ROWS", COPY_MIN_ROWS))


def copy_available() -> bool:
    """PostgreSQL through psycopg2 (``copy_expert``)."""
    return connection.vendor == "postgresql" and connection.Database.__name__ == "psycopg2"


def use_copy(rows: int) -> bool:
    return rows >= copy_min_rows() and copy_available()


def create_stage(spec: StageSpec) -> None:
    """(Re)create the temporary staging table; it is dropped at commit at the latest."""
    columns = ", ".join(f"{name} {kind} NOT NULL" for name, kind in spec.columns)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {spec.table}")
        cursor.execute(f"CREATE TEMPORARY TABLE {spec.table} ({columns}) ON COMMIT DROP")


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_text(value) -> str:
    """One value in COPY's text format (dates ISO, decimals without an exponent, text escaped)."""
    if isinstance(value, str):
        return value.translate(_COPY_ESCAPES)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


class CopyStream:
    """A file-like ``read()`` over text (or bytes) pieces made on demand, for ``copy_expert``
    (bounded memory): each read joins the next ``per_read`` pieces (lines, or blocks of lines)."""

    def __init__(self, pieces: Iterator[str] | Iterator[bytes], per_read: int = COPY_LINES_PER_CHUNK):
        self._pieces, self._per_read = pieces, per_read

    def read(self, size: int = -1) -> str | bytes:
        pieces = list(itertools.islice(self._pieces, self._per_read))
        return pieces[0][:0].join(pieces) if pieces else ""

    readline = read


def _replace_by_copy(spec: StageSpec, source: DataSource, rows: Iterable[tuple]) -> LoadResult:
    with transaction.atomic():  # inside the caller's transaction: a savepoint
        create_stage(spec)
        lines = ("\t".join(map(copy_text, row)) + "\n" for row in rows)
        names = ", ".join(name for name, _kind in spec.columns)
        with connection.cursor() as cursor:
            cursor.copy_expert(f"COPY {spec.table} ({names}) FROM STDIN", CopyStream(lines), size=1 << 20)
        return replace_staged(spec, source)


def replace_staged(spec: StageSpec, source: DataSource) -> LoadResult:
    """Replace ``source``'s facts in the scenario-periods of the staging table ``spec.table``
    (one row per natural key) with its rows; the same semantics and counts as the portable
    path. Call inside a transaction; the staging table is dropped at the end."""
    fact, stage = spec.fact_table, spec.table
    same_key = " AND ".join(f"f.{name} = s.{name}" for name in spec.keys)
    changed = " OR ".join(f"f.{name} <> s.{name}" for name in spec.values)
    result = LoadResult()
    with transaction.atomic(), connection.cursor() as cursor:
        restore = big_query_settings(cursor)
        cursor.execute(f"ANALYZE {stage}")
        cursor.execute(f"SELECT count(*) FROM {stage}")  # noqa: S608 - our own table names only
        staged = cursor.fetchone()[0]
        cursor.execute(
            f"""CREATE TEMPORARY TABLE {stage}_scope ON COMMIT DROP AS
            SELECT DISTINCT s.scenario_id, {spec.period} AS period FROM {stage} s"""  # noqa: S608
        )

        def counted(sql: str, params: list) -> int:
            cursor.execute(
                f"""WITH done AS ({sql} RETURNING f.period)
                SELECT period, count(*) FROM done GROUP BY period""",  # noqa: S608
                params,
            )
            total = 0
            for period, count in cursor.fetchall():
                result.changed_periods.add(period)
                total += count
            return total

        # Table and column names come from the specs above; the source is a parameter.
        result.rows_deleted = counted(
            f"""DELETE FROM {fact} f USING {stage}_scope sc
            WHERE f.source_id = %s AND f.scenario_id = sc.scenario_id AND f.period = sc.period
            AND NOT EXISTS (SELECT 1 FROM {stage} s WHERE {same_key})""",  # noqa: S608
            [source.pk],
        )
        assignments = ", ".join(f"{name} = s.{name}" for name in spec.values)
        result.rows_updated = counted(
            f"""UPDATE {fact} f SET {assignments} FROM {stage} s
            WHERE f.source_id = %s AND {same_key} AND ({changed})""",  # noqa: S608
            [source.pk],
        )
        names = [name for name, _kind in spec.columns if name != "period"]
        result.rows_inserted = counted(
            f"""INSERT INTO {fact} AS f (source_id, period, {", ".join(names)})
            SELECT %s, {spec.period}, {", ".join("s." + name for name in names)} FROM {stage} s
            WHERE NOT EXISTS (SELECT 1 FROM {fact} f WHERE f.source_id = %s AND {same_key})
            ORDER BY {", ".join("s." + name for name in spec.index_order)}""",  # noqa: S608
            [source.pk, source.pk],
        )
        result.rows_unchanged = staged - result.rows_inserted - result.rows_updated
        cursor.execute(f"DROP TABLE {stage}_scope")
        cursor.execute(f"DROP TABLE {stage}")
        if spec.model is FinancialFact:
            update_ledger_totals(result.changed_periods)
        restore()
    return result


def load_grouped(
    spec: StageSpec,
    source: DataSource,
    *,
    columns: list[str],
    blocks: Callable[[int | None], Iterator[bytes]],
    scope: set[tuple[int, date]],
    rows: int,
    totals: Callable[[], Iterator[bytes]] | None = None,
) -> LoadResult:
    """Replace ``source``'s facts in ``scope``, the (scenario id, month) pairs of the input, with
    ``rows`` facts already grouped (one per natural key) and in the fact table's index order:
    ``blocks(source_id)`` gives them as CSV with ``columns`` (and the source id first when it is
    given). PostgreSQL only; call inside a transaction.

    When the source has no facts in the scope yet (a first load of these months) they are
    copied straight into the fact table: nothing to compare, and the unique natural key refuses
    a duplicate. Otherwise through the staging table and ``replace_staged``. ``totals()``, for
    financial facts, gives the rows' sums per ledger total (``add_to_ledger_totals``): a first
    load then adds them to the totals instead of recomputing its months from the facts."""
    names = ", ".join(columns)
    with transaction.atomic(), connection.cursor() as cursor:
        if _any_in_scope(cursor, spec.fact_table, scope, source):
            clock = time.perf_counter()
            create_stage(spec)
            cursor.copy_expert(
                f"COPY {spec.table} ({names}) FROM STDIN (FORMAT csv)", CopyStream(blocks(None), per_read=1)
            )
            staged = time.perf_counter()
            result = replace_staged(spec, source)
            result.timings["copy"] = round(staged - clock, 3)
            result.timings["replace"] = round(time.perf_counter() - staged, 3)
            return result
        clock = time.perf_counter()
        cursor.copy_expert(
            f"COPY {spec.fact_table} (source_id, {names}) FROM STDIN (FORMAT csv)",
            CopyStream(blocks(source.pk), per_read=1),
        )
        result = LoadResult(rows_inserted=rows, changed_periods={period for _scenario, period in scope})
        result.timings["copy"] = round(time.perf_counter() - clock, 3)
        if spec.model is FinancialFact:
            clock = time.perf_counter()
            if totals is None:
                update_ledger_totals(result.changed_periods)
            else:
                add_to_ledger_totals(totals(), scope)
            result.timings["totals"] = round(time.perf_counter() - clock, 3)
        return result


def _any_in_scope(cursor, table: str, scope: set[tuple[int, date]], source: DataSource | None = None) -> bool:
    """Whether ``table`` has rows (of ``source``, if given) in these (scenario id, month) pairs."""
    scenarios, periods = zip(*sorted(scope), strict=True) if scope else ((), ())
    of_source = "" if source is None else f"WHERE f.source_id = {int(source.pk)}"
    cursor.execute(
        f"""SELECT EXISTS (SELECT 1 FROM {table} f JOIN unnest(%s::bigint[], %s::date[]) AS sc
        (scenario_id, period) ON f.scenario_id = sc.scenario_id AND f.period = sc.period {of_source})""",  # noqa: S608
        [list(scenarios), list(periods)],
    )
    return cursor.fetchone()[0]


def add_to_ledger_totals(blocks: Iterator[bytes], scope: set[tuple[int, date]]) -> None:
    """Add these sums to ``LedgerTotal``: CSV rows of (period, entity id, scenario id, account
    id, amount), one per total, in the (scenario id, month) pairs of ``scope``. Right only for
    facts just inserted, none replaced (a first load of its months): the totals then grow by
    exactly their sums. Copied straight in when no other source has totals there."""
    table, stage = LedgerTotal._meta.db_table, "finops_stage_totals"
    columns = "period, entity_id, scenario_id, account_id, amount"
    with connection.cursor() as cursor:
        if not _any_in_scope(cursor, table, scope):
            cursor.copy_expert(
                f"COPY {table} ({columns}) FROM STDIN (FORMAT csv)", CopyStream(blocks, per_read=1)
            )
            return
        cursor.execute(f"DROP TABLE IF EXISTS {stage}")
        cursor.execute(
            f"""CREATE TEMPORARY TABLE {stage} (period date NOT NULL, entity_id bigint NOT NULL,
            scenario_id bigint NOT NULL, account_id bigint NOT NULL, amount numeric NOT NULL)
            ON COMMIT DROP"""
        )
        cursor.copy_expert(
            f"COPY {stage} ({columns}) FROM STDIN (FORMAT csv)", CopyStream(blocks, per_read=1)
        )
        cursor.execute(
            f"""INSERT INTO {table} AS t ({columns})
            SELECT {columns} FROM {stage} ORDER BY period, scenario_id, entity_id, account_id
            ON CONFLICT (period, scenario_id, entity_id, account_id)
            DO UPDATE SET amount = t.amount + EXCLUDED.amount"""  # noqa: S608 - our own tables
        )
        cursor.execute(f"DROP TABLE {stage}")


def delete_facts_outside(
    model: type[models.Model], source: DataSource, scope: set[tuple[int, date]]
) -> tuple[int, set[date]]:
    """Delete ``source``'s facts of ``model`` outside ``scope``, the (scenario id, period) pairs
    a full-snapshot input covers (every fact of the source when the scope is empty); returns
    how many and in which months. Keeps the ledger totals, as every write here does."""
    covered = models.Q()
    for scenario_id, period in scope:
        covered |= models.Q(scenario_id=scenario_id, period=period)
    stale = model.objects.filter(source=source)
    if scope:
        stale = stale.exclude(covered)
    months = set(stale.values_list("period", flat=True).distinct())
    if not months:
        return 0, months
    deleted = stale.delete()[0]
    if model is FinancialFact:
        update_ledger_totals(months)
    return deleted, months


def update_ledger_totals(months: Iterable[date]) -> None:
    """Recompute ``LedgerTotal`` for these months from the financial facts (every scenario).

    Called by every function here that changes financial facts, with the months it changed,
    inside the same transaction: the totals never differ from the facts."""
    months = sorted(set(months))
    if not months:
        return
    scenarios = list(Scenario.objects.values_list("pk", flat=True))
    if not scenarios:
        return
    in_months = ", ".join(["%s"] * len(months))
    # The scenario list lets PostgreSQL read a few months through the (scenario, period) index.
    in_scenarios = ", ".join(["%s"] * len(scenarios))
    with connection.cursor() as cursor:
        restore = big_query_settings(cursor)  # its hash table in memory, whatever the estimate
        cursor.execute(f"DELETE FROM {LedgerTotal._meta.db_table} WHERE period IN ({in_months})", months)  # noqa: S608
        _insert_ledger_totals(
            cursor,
            f"WHERE scenario_id IN ({in_scenarios}) AND period IN ({in_months})",
            [*scenarios, *months],
        )
        restore()


def rebuild_ledger_totals() -> int:
    """Recompute every ``LedgerTotal`` from the financial facts; returns the number of totals."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {LedgerTotal._meta.db_table}")  # noqa: S608
        _insert_ledger_totals(cursor, "", [])
        return cursor.rowcount


def _insert_ledger_totals(cursor, where: str, params: list) -> None:
    cursor.execute(
        f"""INSERT INTO {LedgerTotal._meta.db_table} (period, entity_id, scenario_id, account_id, amount)
        SELECT period, entity_id, scenario_id, account_id, SUM(amount) FROM {FinancialFact._meta.db_table}
        {where} GROUP BY period, entity_id, scenario_id, account_id""",  # noqa: S608 - our own tables
        params,
    )


def record_coverage(*, source: DataSource) -> int:
    """Recount ``source``'s facts per scenario and month into PeriodCoverage (two GROUP BYs)."""
    PeriodCoverage.objects.filter(source=source).delete()
    rows = []
    for kind, model in (
        (PeriodCoverage.FactKind.FINANCIAL, FinancialFact),
        (PeriodCoverage.FactKind.OPERATIONAL, OperationalFact),
    ):
        grouped = (
            model.objects.filter(source=source)
            .values("scenario_id", "period")
            .annotate(rows=models.Count("id"))
            .order_by()
        )
        rows.extend(PeriodCoverage(source=source, fact_kind=kind, **group) for group in grouped)
    PeriodCoverage.objects.bulk_create(rows, batch_size=BATCH_SIZE)
    return len(rows)
