"""The refresh under stress, with a real Celery worker on the real PostgreSQL and Redis.

One stack for the module (its own database and Celery queue, as in ``test_full_stack``): the
demo company is loaded, and a data source ``slow`` of kind ``file`` is read in the worker by
``tests.finops.slow_source`` (``refresh_worker.py`` registers it), a loader that writes its
facts and then waits while a "hold" file exists. The worker is the prefork pool with two
processes, ``acks_late`` and ``reject_on_worker_lost`` as in production. Then:

- a refresh enqueued through Redis runs end to end in the worker;
- two refreshes enqueued together make one run; the other is refused with a message;
- the worker process running a refresh is killed with SIGKILL while its facts are written
  but not committed: the published facts, coverage, measure and KPI values are exactly as
  before; the task is delivered again, the redelivered run marks the dead one failed with
  the reason and succeeds; a new refresh then succeeds too.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
from django.conf import settings

from finops.celery import app
from finops.refresh import DEAD_RUN_REASON
from tests.integration.test_full_stack import ROOT, Stack, fresh_database, stop_stack

pytestmark = pytest.mark.integration

TASK = "finops.tasks.refresh_task"
TIMEOUT = 60  # seconds for any one wait; the whole module takes about 30 s
PUBLISHED = (
    "finops_financialfact",
    "finops_ledgertotal",
    "finops_periodcoverage",
    "kpis_measurevalue",
    "kpis_kpivalue",
)

SEED = """
import json
from finops.models import DataSource, FinancialFact
fact = FinancialFact.objects.filter(scenario__kind="actual", account__account_type="revenue").select_related(
    "entity", "department", "scenario", "account").order_by("period").first()
codes = {"entity": fact.entity.code, "department": fact.department.code, "scenario": fact.scenario.code,
         "account": fact.account.code}
DataSource.objects.create(
    slug="slow", name="Slow", kind="file", is_active=False, config={"codes": codes, "rows": []}
)
print("SEED " + json.dumps({"period": fact.period.isoformat()}))
"""


@dataclass
class Robust:
    stack: Stack
    db: psycopg2.extensions.connection  # autocommit: every query sees the latest commits
    queue: str
    tmp: Path
    period: str  # a month with demo actuals, so the slow source's rows change KPI values

    def configure(self, rows: list[list[str]], **options: str) -> None:
        with self.db.cursor() as cursor:
            cursor.execute("SELECT config FROM finops_datasource WHERE slug = 'slow'")
            config = {"codes": cursor.fetchone()[0]["codes"], "rows": rows, **options}
            cursor.execute(
                "UPDATE finops_datasource SET config = %s WHERE slug = 'slow'", [json.dumps(config)]
            )

    def send(self):
        return app.send_task(TASK, kwargs={"source_slug": "slow", "trigger": "manual"}, queue=self.queue)

    def result(self, sent) -> dict:
        try:
            return sent.get(timeout=TIMEOUT)
        except BaseException:
            print(self.stack.report())
            raise
        finally:
            sent.forget()

    def run(self, pk: int) -> dict:
        with self.db.cursor() as cursor:
            cursor.execute("SELECT id, status, rows_read, errors FROM finops_refreshrun WHERE id = %s", [pk])
            return dict(zip(("id", "status", "rows_read", "errors"), cursor.fetchone(), strict=True))

    def run_ids(self) -> list[int]:
        with self.db.cursor() as cursor:
            cursor.execute("SELECT id FROM finops_refreshrun ORDER BY id")
            return [row[0] for row in cursor]

    def running(self) -> list[int]:
        with self.db.cursor() as cursor:
            cursor.execute("SELECT id FROM finops_refreshrun WHERE status = 'running'")
            return [row[0] for row in cursor]

    def published(self) -> dict[str, tuple[int, str]]:
        """Every published row of facts, coverage, measure values and KPI values, as a count and
        an md5 of the rows in id order."""
        sums = {}
        with self.db.cursor() as cursor:
            for table in PUBLISHED:
                rows = "md5(coalesce(string_agg(t::text, '|' ORDER BY t.id), ''))"
                cursor.execute(f"SELECT count(*), {rows} FROM {table} t")  # noqa: S608 - names above
                sums[table] = cursor.fetchone()
        return sums

    def slow_facts(self) -> list[tuple[str, str]]:
        with self.db.cursor() as cursor:
            cursor.execute(
                "SELECT f.period::text, f.amount::numeric::text FROM finops_financialfact f"
                " JOIN finops_datasource s ON s.id = f.source_id WHERE s.slug = 'slow' ORDER BY f.period"
            )
            return [(period, str(float(amount))) for period, amount in cursor]

    def attempts(self, path: Path) -> list[int]:
        return [int(line) for line in path.read_text().split()] if path.exists() else []


@pytest.fixture(scope="module")
def robust(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("robust")
    queue = f"finops-robust-{secrets.token_hex(4)}"
    with fresh_database("finops_robust") as url:
        env = {
            **os.environ,
            "FINOPS_ENV": "development",
            "DEBUG": "false",
            "DATABASE_URL": url,
            "REDIS_URL": settings.REDIS_URL,
            "CELERY_QUEUE": queue,  # this module's own queue on the shared Redis
            "DJANGO_SETTINGS_MODULE": "finops.settings",
            "PYTHONUNBUFFERED": "1",
        }
        stack = Stack(tmp, env)
        db = psycopg2.connect(url)
        db.autocommit = True
        try:
            stack.manage("migrate", "--noinput")
            stack.manage("demo", "--months", "12")
            seeded = stack.manage("shell", "-c", SEED)
            period = json.loads(seeded.split("SEED ", 1)[1].splitlines()[0])["period"]
            worker = stack.start(
                "worker", sys.executable, ROOT / "tests/integration/refresh_worker.py", "--pool=prefork",
                "--concurrency=2", "--loglevel=info", f"--hostname={queue}@%h", "--without-mingle",
                "--without-gossip", "--without-heartbeat",
            )  # fmt: skip
            stack.wait_for_log(worker, " ready.")
            yield Robust(stack, db, queue, tmp, period)
        except BaseException:
            print(stack.report())
            raise
        finally:
            db.close()
            stop_stack(stack, queue)


def month(period: str, offset: int) -> str:
    year, mon = int(period[:4]), int(period[5:7]) - 1 + offset
    return f"{year + mon // 12:04d}-{mon % 12 + 1:02d}-01"


def test_a_refresh_enqueued_through_the_broker_runs_end_to_end_in_the_worker(robust):
    rows = [[month(robust.period, 0), "1000"], [month(robust.period, 1), "2000"]]
    robust.configure(rows)
    kpis_before = robust.published()["kpis_kpivalue"]

    outcome = robust.result(robust.send())

    assert outcome["status"] == "succeeded", outcome
    run = robust.run(outcome["run"])
    assert (run["status"], run["rows_read"], run["errors"]) == ("succeeded", 2, [])
    assert robust.slow_facts() == [(month(robust.period, 0), "1000.0"), (month(robust.period, 1), "2000.0")]
    assert robust.published()["kpis_kpivalue"] != kpis_before, "the recompute changed no KPI value"
    robust.stack.wait_for_log(robust.stack.processes[0], f"refresh run {run['id']}: source slow", timeout=5)


def test_two_refreshes_requested_at_once_make_one_run_and_the_other_is_refused(robust):
    hold, attempts = robust.tmp / "hold-two", robust.tmp / "attempts-two"
    hold.touch()
    rows = [[month(robust.period, 0), "1100"], [month(robust.period, 1), "2100"]]
    robust.configure(rows, hold_file=str(hold), attempts_file=str(attempts))
    runs_before = robust.run_ids()

    first, second = robust.send(), robust.send()  # together; the worker has two processes
    try:
        # One of them loads and waits on the hold file; the other must be refused meanwhile.
        robust.stack.wait("one request refused", lambda: first.ready() or second.ready(), TIMEOUT)
        refused, working = (first, second) if first.ready() else (second, first)
        refusal = robust.result(refused)
        assert not working.ready()
    finally:
        hold.unlink()
    outcome = robust.result(working)

    assert "Another refresh is already running" in refusal["refused"]
    assert f"(run {outcome['run']} since" in refusal["refused"]
    assert outcome["status"] == "succeeded"
    assert robust.run_ids() == [*runs_before, outcome["run"]]  # exactly one run
    assert len(robust.attempts(attempts)) == 1  # and one load
    assert robust.slow_facts() == [(month(robust.period, 0), "1100.0"), (month(robust.period, 1), "2100.0")]


def test_a_worker_killed_mid_refresh_leaves_the_published_data_exactly_as_before(robust):
    robust.configure([[month(robust.period, 0), "1200"], [month(robust.period, 1), "2200"]])
    assert robust.result(robust.send())["status"] == "succeeded"
    before = robust.published()
    hold, attempts = robust.tmp / "hold-kill", robust.tmp / "attempts-kill"
    hold.touch()
    changed = [[month(robust.period, 0), "9999"], [month(robust.period, 1), "7777"]]
    robust.configure(changed, hold_file=str(hold), attempts_file=str(attempts))
    runs_before = robust.run_ids()
    worker = robust.stack.processes[0]
    started = time.monotonic()

    sent = robust.send()
    try:
        # The pool process has written the new facts (uncommitted) and waits: kill it.
        robust.stack.wait("the first attempt's load", lambda: robust.attempts(attempts), TIMEOUT)
        (killed,) = robust.running()
        os.kill(robust.attempts(attempts)[0], signal.SIGKILL)

        # The worker hands the message back to Redis; it is delivered again, and the new attempt
        # marks the dead run failed before it loads (and waits on the hold file in its turn).
        robust.stack.wait("the redelivered attempt", lambda: len(robust.attempts(attempts)) == 2, TIMEOUT)
        dead = robust.run(killed)
        assert dead["status"] == "failed"
        assert dead["errors"][-1]["message"] == DEAD_RUN_REASON
        assert robust.published() == before  # nothing of either attempt is published yet
    finally:
        hold.unlink()
    outcome = robust.result(sent)
    seconds = time.monotonic() - started

    assert outcome["status"] == "succeeded" and outcome["run"] != killed
    assert robust.run_ids() == [*runs_before, killed, outcome["run"]]
    assert robust.slow_facts() == [(month(robust.period, 0), "9999.0"), (month(robust.period, 1), "7777.0")]
    after = robust.published()
    assert after["kpis_kpivalue"] != before["kpis_kpivalue"]
    assert "WorkerLostError" in worker.text() or "exited prematurely" in worker.text()
    assert seconds < 30, f"recovery took {seconds:.1f} s"

    # And the next refresh simply runs: same data, nothing duplicated.
    robust.configure(changed)
    again = robust.result(robust.send())
    assert again["status"] == "succeeded"
    assert robust.slow_facts() == [(month(robust.period, 0), "9999.0"), (month(robust.period, 1), "7777.0")]
    assert robust.published()["finops_financialfact"] == after["finops_financialfact"]
