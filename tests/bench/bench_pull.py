"""Benchmark of a refresh of several slow remote sources: pulled ahead on threads, or one by one.

Starts a local HTTP server whose every page answers after ``--latency`` seconds (default 0.15 s,
a remote system's think time), and defines ``--sources`` HTTP sources (default 4), each of
``--pages`` pages (default 8) of 500 ledger records, paginated by page number. Measured in the
same run, on the same data, in a database of its own (PostgreSQL ``finops_bench_pull`` when
DATABASE_URL is PostgreSQL, else a temporary SQLite file):

- the baseline: a refresh of every source with ``FINOPS_PULL_THREADS=0`` (each source pulled
  while it loads, one after the other, as before pulls ahead existed);
- the same refresh with the default pull threads (each remote source pulled on its own thread
  into a spool file while the sources before it load).

Both refresh the same data that a first, untimed refresh loaded (the nightly case: most of it
is unchanged); each timing is the best of two, alternating. It prints both times, their ratio,
and the pulls' own seconds. There is no bar in PRODUCT.md for this: it shows what pulling ahead
saves, and that what it loads is the same.

    python tests/bench/bench_pull.py [--sources N] [--pages N] [--latency S]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from bench_engine import bench_url, drop_database, recreate_database, setup_django

BENCH_DB = "finops_bench_pull"
RECORDS_PER_PAGE = 500
REPEATS = 2


class Ledger(BaseHTTPRequestHandler):
    """``/ledger/<source>?page=N``: 500 records a page up to the last page, then an empty one."""

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802 - the http.server API
        parts = urlsplit(self.path)
        page = int(parse_qs(parts.query).get("page", ["1"])[0])
        source = int(parts.path.rsplit("/", 1)[1])
        time.sleep(self.server.latency)
        items = []
        if page <= self.server.pages:
            for i in range(RECORDS_PER_PAGE):
                n = (page - 1) * RECORDS_PER_PAGE + i
                items.append(
                    {
                        "posted": f"2024-{n % 12 + 1:02d}-{n % 28 + 1:02d}",
                        "account": "4000" if n % 3 else "1000",
                        "amount": f"{(n * 7919 + source * 104729) % 100000 / 100:.2f}",
                    }
                )
        body = json.dumps({"items": items}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def database_url(folder: Path) -> str:
    """``finops_bench_pull`` (recreated) on DATABASE_URL's PostgreSQL, else a SQLite file."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        return f"sqlite:///{folder / 'bench.sqlite3'}"
    recreate_database(url, BENCH_DB)
    return bench_url(url, BENCH_DB)


def define_sources(port: int, count: int) -> None:
    from finops.models import Account, DataSource, Department, Entity, Scenario

    Entity.objects.create(code="acme", name="Acme Ltd", currency="USD")
    Department.objects.create(code="sales", name="Sales", side=Department.Side.OPERATIONS)
    Scenario.objects.create(code="actual", name="Actual", kind=Scenario.Kind.ACTUAL)
    Account.objects.create(code="4000", name="Revenue", account_type="revenue", time_behaviour="flow")
    Account.objects.create(code="1000", name="Cash", account_type="asset", time_behaviour="balance")
    mapping = {
        "fact_kind": "financial",
        "columns": {"date": "posted", "account": "account", "amount": "amount"},
        "constants": {"entity": "acme", "department": "sales", "scenario": "actual"},
    }
    for n in range(count):
        DataSource.objects.create(
            slug=f"api-{n}",
            name=f"API {n}",
            kind=DataSource.Kind.HTTP,
            config={
                "url": f"http://127.0.0.1:{port}/ledger/{n}",
                "records_path": "items",
                "pagination": "page",
                "allow_internal": True,
                "timeout_seconds": 30,
                "mapping": mapping,
            },
        )


def timed_refresh(threads: int):
    from django.conf import settings

    from finops.refresh import refresh

    settings.FINOPS_PULL_THREADS = threads
    started = time.perf_counter()
    run = refresh()
    seconds = time.perf_counter() - started
    if run.status != "succeeded":
        raise SystemExit(f"the refresh failed: {run.errors[:3]}")
    return seconds, run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=int, default=4)
    parser.add_argument("--pages", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.15)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="finops-bench-pull-"))
    url = database_url(folder)
    setup_django(url)
    from django.conf import settings
    from django.core.management import call_command

    from finops.models import FinancialFact

    default_threads = settings.FINOPS_PULL_THREADS
    call_command("migrate", verbosity=0)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Ledger)
    server.latency, server.pages = args.latency, args.pages
    threading.Thread(target=server.serve_forever, daemon=True).start()
    define_sources(server.server_address[1], args.sources)
    records = args.sources * args.pages * RECORDS_PER_PAGE
    print(
        f"bench_pull: {args.sources} HTTP sources x {args.pages} pages x {RECORDS_PER_PAGE} records "
        f"({records:,} records), {args.latency:.2f} s per request, database {url.split(':')[0]}",
        flush=True,
    )

    first, _ = timed_refresh(default_threads)
    facts = sorted(FinancialFact.objects.values_list("source_id", "period", "account_id", "amount"))
    one_by_one, ahead, last = [], [], None
    for _ in range(REPEATS):
        one_by_one.append(timed_refresh(0)[0])
        seconds, last = timed_refresh(default_threads)
        ahead.append(seconds)
    same = facts == sorted(FinancialFact.objects.values_list("source_id", "period", "account_id", "amount"))
    pulls = [step["pulled_ahead"]["seconds"] for step in last.steps if "pulled_ahead" in step]
    requests = args.pages + 1  # the last page is the empty one that ends the pagination

    rows = [
        ("first refresh (inserts every fact), pulled ahead", f"{first:.2f} s"),
        (f"refresh, sources pulled one by one (threads 0), best of {REPEATS}", f"{min(one_by_one):.2f} s"),
        (
            f"refresh, sources pulled ahead (threads {default_threads}), best of {REPEATS}",
            f"{min(ahead):.2f} s",
        ),
        ("ratio, pulled ahead / one by one", f"{min(ahead) / min(one_by_one):.2f} x"),
    ]
    print()
    for label, figure in rows:
        print(f"  {label:<62}{figure:>9}")
    print(
        f"  the pulls' own seconds: {', '.join(f'{s:.2f}' for s in pulls)} "
        f"(each at least {requests} requests x {args.latency:.2f} s = {requests * args.latency:.2f} s)"
    )
    print(f"  the facts are the same after every refresh: {'yes' if same else 'NO'}")
    from django.db import connection

    connection.close()
    server.shutdown()
    if url.startswith("postgres"):
        drop_database(url, BENCH_DB)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
