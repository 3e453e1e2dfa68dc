"""Benchmark of loading a ledger file into the facts against the quality bar in PRODUCT.md.

Generates a ledger CSV of ``--rows`` rows (default 5,000,000; deterministic) in a temporary
folder: ``period,entity,department,account,scenario,amount`` over 60 months, 12 entities, 20
of 60 departments per entity, 40 of 150 leaf accounts per department (9,600 cost-centre
accounts a month), 88.5 % actual ledger lines (several per key: they add up) and 11.5 %
budget lines; amounts with cents, some negative.

Measured in the same run, on the same file, in a fresh database (``finops_bench_load``,
dropped and recreated):

- the baseline: a raw ``COPY ... FROM STDIN (FORMAT csv, HEADER)`` of the file into an
  unlogged table with the fact columns' types (date, text codes, numeric(20, 4)) through
  psycopg2's ``copy_expert``, best of two;
- the load: a file data source pointing at the file, loaded through the real path
  (``finops.sources.files.load``: read, validate every row, map, load into the facts) inside
  a transaction, commit included (deferred foreign keys are checked then), in a fresh
  process whose peak RSS is reported;
- a second load of the same file, which must change nothing.

Bar: load rows/s >= 0.5 x the baseline's rows/s.

    python tests/bench/bench_load.py [--rows N] [--keep]

It prints a skip message and exits 0 when DATABASE_URL is not PostgreSQL. At the bar's own
size (5 M rows) it exits 1 when the bar is missed; smaller runs are informational.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
BAR_ROWS = 5_000_000
BAR = 0.5
BENCH_DB = "finops_bench_load"
MONTHS = 60
FIRST_MONTH = date(2020, 1, 1)
ENTITIES, DEPARTMENTS, ACCOUNTS = 12, 60, 150
DEPARTMENTS_PER_ENTITY, ACCOUNTS_PER_DEPARTMENT = 20, 40
BUDGET_SHARE = 0.115
SEED = 20240531
SOURCE_SLUG = "bench-ledger"
HEADER = "period,entity,department,account,scenario,amount\n"


def bench_url(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def admin(url: str, statement: str) -> None:
    import psycopg2

    connection = psycopg2.connect(bench_url(url, "postgres"))
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(statement)
    connection.close()


def setup_django(url: str, folder: Path) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ["FINOPS_ENV"] = "test"
    os.environ["DEBUG"] = "false"  # DEBUG would keep every query in memory
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["FINOPS_SOURCE_FILES_DIR"] = str(folder)
    os.environ["FINOPS_SOURCE_FILE_MAX_BYTES"] = str(4 * 1024**3)  # the 5 M-row file is ~270 MB
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "finops.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


# --- the file --------------------------------------------------------------------------------


def month_text(index: int) -> str:
    year, month = divmod(FIRST_MONTH.month - 1 + index, 12)
    return f"{FIRST_MONTH.year + year:04d}-{month + 1:02d}-01"


def generate(path: Path, rows: int) -> int:
    """Write the ledger; return the number of distinct natural keys it holds."""
    rng = np.random.default_rng(SEED)
    # Which departments each entity has, and which accounts each department books on.
    entity_departments = np.array(
        [rng.choice(DEPARTMENTS, DEPARTMENTS_PER_ENTITY, replace=False) for _ in range(ENTITIES)]
    )
    department_accounts = np.array(
        [rng.choice(ACCOUNTS, ACCOUNTS_PER_DEPARTMENT, replace=False) for _ in range(DEPARTMENTS)]
    )
    per_month = ENTITIES * DEPARTMENTS_PER_ENTITY * ACCOUNTS_PER_DEPARTMENT
    months = [month_text(i) for i in range(MONTHS)]
    entities = [f"E{i + 1:02d}" for i in range(ENTITIES)]
    departments = [f"D{i + 1:03d}" for i in range(DEPARTMENTS)]
    accounts = [f"A{4000 + i}" for i in range(ACCOUNTS)]
    scenarios = ["actual", "budget"]
    budget = int(rows * BUDGET_SHARE)
    keys: set[int] = set()
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write(HEADER)
        for start in range(0, rows, 200_000):
            n = min(200_000, rows - start)
            scenario = (np.arange(start, start + n) >= rows - budget).astype(np.int64)
            cell = rng.integers(0, per_month * MONTHS, n)
            month, slot = np.divmod(cell, per_month)
            entity, rest = np.divmod(slot, DEPARTMENTS_PER_ENTITY * ACCOUNTS_PER_DEPARTMENT)
            which_department, which_account = np.divmod(rest, ACCOUNTS_PER_DEPARTMENT)
            department = entity_departments[entity, which_department]
            account = department_accounts[department, which_account]
            cents = rng.integers(-2_000_00, 25_000_00, n)
            keys.update((cell * 2 + scenario).tolist())
            lines = [
                f"{months[m]},{entities[e]},{departments[d]},{accounts[a]},{scenarios[s]},"
                f"{'-' if c < 0 else ''}{abs(c) // 100}.{abs(c) % 100:02d}\n"
                for m, e, d, a, s, c in zip(
                    month.tolist(),
                    entity.tolist(),
                    department.tolist(),
                    account.tolist(),
                    scenario.tolist(),
                    cents.tolist(),
                    strict=True,
                )
            ]
            out.write("".join(lines))
    return len(keys)


def create_company() -> None:
    from finops.models import Account, DataSource, Department, Entity, Scenario

    Entity.objects.bulk_create(Entity(code=f"E{i + 1:02d}", name=f"Entity {i + 1}") for i in range(ENTITIES))
    Department.objects.bulk_create(
        Department(code=f"D{i + 1:03d}", name=f"Department {i + 1}") for i in range(DEPARTMENTS)
    )
    Scenario.objects.create(code="actual", name="Actual", kind=Scenario.Kind.ACTUAL)
    Scenario.objects.create(code="budget", name="Budget", kind=Scenario.Kind.BUDGET)
    total = Account.objects.create(code="TOTAL", name="Total", account_type="expense", time_behaviour="flow")
    Account.objects.bulk_create(
        Account(
            code=f"A{4000 + i}",
            name=f"Account {i}",
            parent=total,
            account_type="expense",
            time_behaviour="flow",
        )
        for i in range(ACCOUNTS)
    )
    DataSource.objects.create(
        slug=SOURCE_SLUG,
        name="Bench ledger",
        kind=DataSource.Kind.FILE,
        config={
            "path": "ledger.csv",
            "mapping": {
                "fact_kind": "financial",
                "columns": {
                    "period": "period",
                    "entity": "entity",
                    "department": "department",
                    "account": "account",
                    "scenario": "scenario",
                    "amount": "amount",
                },
            },
        },
    )


# --- the baseline ------------------------------------------------------------------------------


def baseline(path: Path) -> float:
    """Seconds of one raw COPY of the file into an unlogged table of the facts' column types."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_raw_copy")
        cursor.execute(
            "CREATE UNLOGGED TABLE bench_raw_copy (period date, entity varchar(40), department varchar(40), "
            "account varchar(40), scenario varchar(40), amount numeric(20, 4))"
        )
        started = time.perf_counter()
        with open(path, "rb") as handle:
            cursor.copy_expert(
                "COPY bench_raw_copy FROM STDIN WITH (FORMAT csv, HEADER true)", handle, size=1 << 20
            )
        seconds = time.perf_counter() - started
        copied = cursor.rowcount
        cursor.execute("DROP TABLE bench_raw_copy")
    assert copied in (-1, rows_in(path)), copied
    return seconds


def rows_in(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 22), b"")) - 1


# --- the load, in a fresh process --------------------------------------------------------------


def load_child() -> None:
    """Load the file twice through the file source; print the figures as JSON."""
    setup_django(os.environ["DATABASE_URL"], Path(os.environ["BENCH_FOLDER"]))
    from django.db import transaction

    from finops.models import DataSource, FinancialFact
    from finops.sources import Report
    from finops.sources.files import load

    source = DataSource.objects.get(slug=SOURCE_SLUG)
    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    figures = {"before_kb": before_kb, "loads": []}
    for _ in range(2):
        started = time.perf_counter()
        with transaction.atomic():
            result = load(source, report=Report())
        seconds = time.perf_counter() - started
        figures["loads"].append(
            {
                "seconds": seconds,
                "read": result.rows_read,
                "inserted": result.rows_inserted,
                "updated": result.rows_updated,
                "deleted": result.rows_deleted,
                "unchanged": result.rows_unchanged,
                "changed_periods": len(result.changed_periods),
                "method": result.method,
                "timings": result.timings,
                "facts": FinancialFact.objects.count(),
            }
        )
    figures["peak_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(figures))


def run_child(url: str, folder: Path) -> dict:
    env = dict(os.environ, DATABASE_URL=url, BENCH_FOLDER=str(folder))
    done = subprocess.run(
        [sys.executable, __file__, "--child"], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit("bench_load: the load process failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def mb(kb: int) -> str:
    return f"{kb / 1024:,.0f} MB"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=BAR_ROWS, help="ledger rows (default 5,000,000)")
    parser.add_argument("--keep", action="store_true", help=f"keep the database {BENCH_DB}")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        load_child()
        return 0
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        print("bench_load: SKIPPED - needs PostgreSQL; set DATABASE_URL=postgres://... (make bench does)")
        return 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="finops-bench-load-") as tmp:
        folder = Path(tmp)
        path = folder / "ledger.csv"
        t0 = time.perf_counter()
        keys = generate(path, args.rows)
        size = path.stat().st_size
        print(
            f"  generated {args.rows:,} rows ({size / 1024**2:,.0f} MB, {keys:,} distinct keys) "
            f"in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        admin(url, f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        admin(url, f'CREATE DATABASE "{BENCH_DB}"')
        db_url = bench_url(url, BENCH_DB)
        setup_django(db_url, folder)
        from django.core.management import call_command
        from django.db import connection

        call_command("migrate", verbosity=0)
        create_company()
        copy_seconds = min(baseline(path) for _ in range(2))
        print(f"  baseline COPY: {copy_seconds:.2f} s", flush=True)
        pg_version = connection.pg_version
        connection.close()
        figures = run_child(db_url, folder)
    first, second = figures["loads"]
    copy_rate = args.rows / copy_seconds
    load_rate = args.rows / first["seconds"]
    ratio = load_rate / copy_rate
    unchanged = (second["inserted"], second["updated"], second["deleted"]) == (0, 0, 0) and second[
        "unchanged"
    ] == first["inserted"]
    complete = first["facts"] == keys == second["facts"] and first["read"] == args.rows

    print()
    print(f"FinOps Review load benchmark - {args.rows:,} ledger rows, {MONTHS} months, {keys:,} keys")
    print(f"PostgreSQL {pg_version // 10000}, Python {platform.python_version()}, {os.cpu_count()} CPUs")
    rows = [
        (
            "raw COPY into an unlogged typed table, best of 2",
            f"{copy_seconds:.2f} s",
            f"{copy_rate:,.0f} rows/s",
        ),
        (
            f"file source load, first ({first['inserted']:,} inserted; {first['method']} path)",
            f"{first['seconds']:.2f} s",
            f"{load_rate:,.0f} rows/s",
        ),
        (
            f"file source load, same file again ({second['inserted']} ins, {second['updated']} upd, "
            f"{second['deleted']} del, {second['unchanged']:,} unchanged)",
            f"{second['seconds']:.2f} s",
            f"{args.rows / second['seconds']:,.0f} rows/s",
        ),
        ("peak RSS of the loading process (two loads)", mb(figures["peak_kb"]), ""),
        ("  (its RSS before the first load)", mb(figures["before_kb"]), ""),
    ]
    width = max(len(label) for label, _, _ in rows) + 2
    for label, seconds, rate in rows:
        print(f"  {label:<{width}}{seconds:>10}  {rate:>16}")
    for name, load in (("first", first), ("again", second)):
        if load["timings"]:
            steps = ", ".join(f"{step} {seconds:.2f} s" for step, seconds in load["timings"].items())
            print(f"    steps of the {name} load: {steps}")
    print()
    verdicts = [ratio >= BAR, unchanged, complete]
    print(f"  load rows/s / COPY rows/s = {ratio:.3f} x   (bar >= {BAR})   {verdict(ratio >= BAR)}")
    print(f"  the second load changes nothing   {verdict(unchanged)}")
    print(f"  every key loaded ({first['facts']:,} facts = {keys:,} keys)   {verdict(complete)}")
    print(f"\n  total bench time {time.perf_counter() - started:.0f} s")
    if not args.keep:
        admin(url, f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
    if args.rows < BAR_ROWS:
        print(f"  (the bar is set for {BAR_ROWS:,} rows; at {args.rows:,} the verdict is informational)")
        return 0 if unchanged and complete else 1
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
