"""Remote sources pulled ahead of their loads, several at once (finops/sources/pull.py).

A refresh of several sources pulls its SQL and HTTP sources on threads into spool files while
the sources before them load. What is loaded, and every message of a failing source, must be
exactly what a live load gives; and the pulls must really overlap: the server here answers the
``/meet`` route only once two requests are waiting at the same time.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest

from finops.models import DataSource, FinancialFact, RefreshRun
from finops.refresh import refresh
from finops.sources import LOADERS, Report, sql
from finops.sources.pull import SPOOL_BATCH, Pulls, Stopped, pull_records
from finops.sources.remote import SourceError, Stream, load_source
from tests import factories
from tests.finops.test_http_source import MAPPING, RECORDS, Api, api_source, base, serving

pytestmark = pytest.mark.django_db

MEET_SECONDS = 3  # how long a request to /meet waits for a second one


class MeetingApi(Api):
    """Api, plus ``/meet``: it answers only when another request to it is waiting too."""

    def do_GET(self):  # noqa: N802 - the http.server API
        if urlsplit(self.path).path != "/meet":
            return super().do_GET()
        try:
            self.server.meeting.wait()
        except threading.BrokenBarrierError:
            return self.send(500, "nobody else came", "text/plain")
        return self.send(200, json.dumps({"items": RECORDS}))


@pytest.fixture
def server():
    with serving(MeetingApi) as api:
        api.meeting = threading.Barrier(2, timeout=MEET_SECONDS)
        yield api


@pytest.fixture(autouse=True)
def real_loaders(monkeypatch, settings, tmp_path):
    monkeypatch.setitem(LOADERS, DataSource.Kind.HTTP, "finops.sources.http")
    monkeypatch.setitem(LOADERS, DataSource.Kind.SQL, "finops.sources.sql")
    settings.FINOPS_SOURCE_FILES_DIR = tmp_path / "sources"
    settings.FINOPS_SOURCE_SECRETS_DIR = tmp_path / "secrets"
    (tmp_path / "sources").mkdir()
    settings.FINOPS_PULL_THREADS = 4


@pytest.fixture
def dims():
    return factories.dimensions()


def sqlite_source(tmp_path, slug: str = "erp", lines: list[tuple] | None = None) -> DataSource:
    path = tmp_path / "sources" / f"{slug}.sqlite"
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE gl (posted TEXT, company TEXT, account TEXT, amount TEXT)")
        rows = lines or [
            (r["posted"], "acme", str(r["gl"]["account"]), str(r["amount"]["net"])) for r in RECORDS
        ]
        db.executemany("INSERT INTO gl VALUES (?, ?, ?, ?)", rows)
    db.close()
    mapping = {
        **MAPPING,
        "columns": {"date": "posted", "entity": "company", "account": "account", "amount": "amount"},
    }
    return DataSource.objects.create(
        slug=slug,
        name=slug.upper(),
        kind=DataSource.Kind.SQL,
        config={
            "url": f"sqlite:///{path}",
            "query": "SELECT * FROM gl",
            "timeout_seconds": 5,
            "mapping": mapping,
        },
    )


def facts_by_source() -> dict:
    return {
        (fact.source.slug, fact.period, fact.account.code): fact.amount
        for fact in FinancialFact.objects.select_related("source", "account")
    }


def outcome(run: RefreshRun) -> tuple:
    """What a run did, without its timings and ids."""
    run.refresh_from_db()
    steps = [
        {k: v for k, v in step.items() if k not in ("seconds", "pulled_ahead")}
        for step in run.steps
        if step["source"] != "recompute"  # the recompute's own figures are not the load's
    ]
    return run.status, steps, run.errors, run.warnings, run.rows_read, run.rows_rejected


def test_two_http_sources_are_pulled_at_the_same_time(dims, server):
    api_source(f"{base(server)}/meet", slug="north", retries=0)
    api_source(f"{base(server)}/meet", slug="south", retries=0)
    run = refresh()
    run.refresh_from_db()
    assert run.status == RefreshRun.Status.SUCCEEDED, run.errors  # each answered: they met
    assert [step["pulled_ahead"]["records"] for step in run.steps[:2]] == [4, 4]
    assert {slug for slug, _, _ in facts_by_source()} == {"north", "south"}


def test_without_pull_threads_the_sources_are_read_one_after_the_other(dims, server, settings):
    """The control of the test above: its server does tell overlapping requests apart."""
    settings.FINOPS_PULL_THREADS = 0
    api_source(f"{base(server)}/meet", slug="north", retries=0)
    api_source(f"{base(server)}/meet", slug="south", retries=0)
    run = refresh()
    run.refresh_from_db()
    assert run.status == RefreshRun.Status.FAILED
    assert "nobody else came" in run.errors[0]["message"]
    assert all("pulled_ahead" not in step for step in run.steps)


def run_both_ways(settings, build) -> tuple[tuple, tuple, dict, dict]:
    """The same refresh with sources pulled ahead and loaded live: (outcome, facts) of each."""
    settings.FINOPS_PULL_THREADS = 4
    build()
    pulled = outcome(refresh())
    pulled_facts = facts_by_source()
    steps = RefreshRun.objects.get().steps
    assert any("pulled_ahead" in step for step in steps), "nothing was pulled ahead"
    FinancialFact.objects.all().delete()
    DataSource.objects.all().delete()
    RefreshRun.objects.all().delete()
    settings.FINOPS_PULL_THREADS = 0
    build()
    live = refresh()
    return pulled, outcome(live), pulled_facts, facts_by_source()


def test_a_pulled_load_is_the_live_load(dims, server, settings, tmp_path):
    def build():
        sqlite_source(tmp_path, "erp")
        api_source(f"{base(server)}/pages", slug="shop", pagination="page", records_path="items")
        api_source(
            f"{base(server)}/cursor",
            slug="web",
            pagination="cursor",
            cursor_param="cursor",
            cursor_path="meta.next",
            records_path="items",
        )

    pulled, live, pulled_facts, live_facts = run_both_ways(settings, build)
    assert pulled == live and pulled[0] == RefreshRun.Status.SUCCEEDED
    assert pulled_facts == live_facts and len(live_facts) == 9


@pytest.mark.parametrize(
    "broken",
    [
        {"url": "/broken"},  # malformed JSON, after the pull started
        {"url": "/error", "retries": 1},  # a 500, retried, then reported
        {"url": "/wrong-path"},  # a document without the records path
        {"allow_internal": False},  # refused before any request
        {"records_path": ""},  # a config the source refuses
    ],
    ids=["malformed-json", "server-error", "records-path", "internal-address", "bad-config"],
)
def test_a_failing_pulled_source_fails_with_the_live_message(dims, server, settings, tmp_path, broken):
    def build():
        sqlite_source(tmp_path, "erp")
        config = {**broken, "url": f"{base(server)}{broken.get('url', '/all')}"}
        api_source(**{"slug": "shop", **config})

    pulled, live, pulled_facts, live_facts = run_both_ways(settings, build)
    assert pulled == live
    assert pulled[0] == RefreshRun.Status.FAILED and pulled[2], pulled
    assert pulled_facts == live_facts and {slug for slug, _, _ in live_facts} == {"erp"}


def test_a_query_the_database_refuses_fails_with_the_live_message(dims, settings, tmp_path):
    def build():
        source = sqlite_source(tmp_path, "erp")
        source.config = {
            **source.config,
            "query": "SELECT posted, company, account, amount FROM no_such_table",
        }
        source.save()
        sqlite_source(tmp_path, "erp2")

    pulled, live, _, _ = run_both_ways(settings, build)
    assert pulled == live
    assert "no_such_table" in pulled[2][0]["message"]


def test_pulls_no_load_took_are_closed(dims, server, tmp_path):
    sources = [
        sqlite_source(tmp_path, "erp"),
        api_source(f"{base(server)}/all", slug="shop", records_path="data.lines"),
    ]
    pulls = Pulls.start(sources)
    futures = list(pulls.futures.values())
    assert len(futures) == 2
    pulled = [future.result() for future in futures]
    assert all(p.spool is not None and p.records == 4 for p in pulled)
    pulls.close()
    assert all(p.spool is None for p in pulled)


def test_a_single_source_is_loaded_live(dims, tmp_path):
    source = sqlite_source(tmp_path, "erp")
    assert Pulls.start([source]).futures == {}


def test_only_remote_sources_are_pulled_ahead(dims, server, tmp_path):
    upload = DataSource.objects.create(slug="upload", name="Upload", kind=DataSource.Kind.FILE)
    shop = api_source(f"{base(server)}/all", slug="shop", records_path="data.lines")
    pulls = Pulls.start([upload, shop])
    assert set(pulls.futures) == {shop.pk}
    pulls.close()


# --- the spool ----------------------------------------------------------------------------------


def opener_of(records, header=("posted", "company", "account", "amount")):
    """An opener (as finops.sources.remote.Opener) that yields ``records`` (an iterable)."""

    @contextmanager
    def opener(source, config):
        yield Stream("fake", "a fake stream", list(header), records, "the records", "no records")

    return opener


def numbered_rows(count: int, *, then: Exception | None = None):
    for number in range(1, count + 1):
        yield number, ("2024-01-15", "acme", "4000", "1.00")
    if then is not None:
        raise then


def test_an_error_after_several_batches_is_replayed_after_every_record_read_before_it(dims):
    source = DataSource(slug="erp", kind=DataSource.Kind.SQL)
    failure = SourceError("the database failed while sending rows: connection reset", column="query")
    records = SPOOL_BATCH + 500
    pulled = pull_records(source, lambda s: None, opener_of(numbered_rows(records, then=failure)))
    assert (pulled.records, pulled.error, pulled.live) == (records, failure, "")
    with pulled.open(source, None) as stream:
        replayed = []
        with pytest.raises(SourceError, match="connection reset"):
            for number, _record in stream.records:
                replayed.append(number)
    assert replayed == list(range(1, records + 1))
    pulled.close()


def test_a_record_the_spool_cannot_hold_makes_the_source_load_live(dims, tmp_path):
    """psycopg2 gives a bytea column as a memoryview, which pickle refuses."""
    source = sqlite_source(tmp_path, "erp")

    @contextmanager
    def with_a_binary_column(source, config):
        with sql.open_query(source, config) as stream:
            rows = ((n, (*row, memoryview(b"\x00"))) for n, row in stream.records)
            yield Stream(
                stream.name, stream.origin, [*stream.header, "blob"], rows, stream.where, stream.empty
            )

    pulled = pull_records(source, sql.parse_config, with_a_binary_column)
    assert "memoryview" in pulled.live and pulled.spool is None and pulled.error is None
    result = load_source(source, sql.parse_config, sql.open_query, report=Report(), pulled=pulled)
    assert (result.rows_read, result.rows_inserted) == (4, 3)


def test_a_stopped_pull_ends_at_its_next_batch_on_a_daemon_thread(dims):
    def endless():
        number = 0
        while True:
            number += 1
            yield number, ("2024-01-15", "acme", "4000", "1.00")

    stop = threading.Event()
    stop.set()
    pulled = pull_records(DataSource(slug="erp"), lambda s: None, opener_of(endless()), stop)
    assert isinstance(pulled.error, Stopped) and pulled.records == SPOOL_BATCH


def test_close_stops_the_pulls_no_load_took(dims, monkeypatch, server, tmp_path):
    started, release = threading.Event(), threading.Event()

    def slow_pull(source, stop):
        started.set()
        release.wait(10)
        return pull_records(source, sql.parse_config, sql.open_query, stop)

    monkeypatch.setattr(sql, "pull", slow_pull)
    sources = [sqlite_source(tmp_path, "erp"), sqlite_source(tmp_path, "erp2")]
    pulls = Pulls.start(sources)
    futures = list(pulls.futures.values())
    assert started.wait(10)
    threads = [t for t in threading.enumerate() if t.name.startswith("finops-pull-")]
    assert threads and all(t.daemon for t in threads)  # never holds up the end of a process
    pulls.close()
    release.set()
    results = [future.result(timeout=10) for future in futures if not future.cancelled()]
    assert all(p.spool is None for p in results)  # closed when each pull ended
