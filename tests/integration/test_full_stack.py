"""The full stack of docker-compose.yml, run natively: gunicorn, a Celery worker and Celery beat
against the real PostgreSQL and Redis, with production settings.

The test makes its own database (not pytest-django's) and its own Celery queue, so it can run
beside other suites on one PostgreSQL and Redis. It sets the stack up as the web container
does (migrate, bootstrap) and loads the demo company (with development settings: `demo`
refuses production), then:

- an anonymous visitor is sent to the login page; the demo analyst logs in over HTTP;
- "Refresh now" (POST /data/refresh/) queues the refresh, and the worker runs it;
- a beat schedule stored in the database (every 2 seconds) makes the worker run it again.

On failure it prints the end of every process's log.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
import redis
from django.conf import settings

from finops.roles import DEMO_PASSWORD

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RUN_TIMEOUT = 90  # seconds to wait for a refresh run to succeed
SCHEDULE_NAME = "Integration test: refresh the demo every 2 seconds"


# ---------------------------------------------------------------- processes


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (gunicorn and Celery shut down gracefully), then SIGKILL the whole group."""
        if self.popen.poll() is None:
            self.popen.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # the leader and anything it left behind
        self.popen.wait(timeout=10)


class Stack:
    """The processes of one stack, their logs in ``tmp``, all configured by ``env`` alone."""

    def __init__(self, tmp: Path, env: dict[str, str]):
        self.tmp = tmp
        self.env = env
        self.processes: list[Process] = []
        self.command_logs: list[Path] = []

    def manage(self, *args: str, timeout: float = 300, **env: str) -> str:
        log = self.tmp / f"manage-{len(self.command_logs) + 1}-{args[0]}.log"
        self.command_logs.append(log)
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env={**self.env, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
        log.write_text(result.stdout)
        assert result.returncode == 0, f"manage.py {' '.join(args)} failed:\n{result.stdout[-4000:]}"
        return result.stdout

    def start(self, name: str, *argv: str | Path) -> Process:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            popen = subprocess.Popen(
                [str(arg) for arg in argv],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def check_alive(self) -> None:
        for process in self.processes:
            code = process.popen.poll()
            assert code is None, f"{process.name} exited with code {code}:\n{process.tail()}"

    def wait(self, what: str, condition: Callable[[], object], timeout: float) -> object:
        """Poll ``condition`` until it returns something truthy, failing fast if a process dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            value = condition()
            if value:
                return value
            time.sleep(0.25)
        raise AssertionError(f"Timed out after {timeout:.0f} s waiting for {what}")

    def wait_for_log(self, process: Process, text: str, timeout: float = 60) -> None:
        self.wait(f"{text!r} in the {process.name} log", lambda: text in process.text(), timeout)

    def report(self) -> str:
        parts = [f"----- {log.name} -----\n{log.read_text()[-3000:]}" for log in self.command_logs]
        parts += [f"----- {p.name} (last lines of {p.log}) -----\n{p.tail()}" for p in self.processes]
        return "\n".join(parts)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------- HTTP


class LoopbackCookiePolicy(http.cookiejar.DefaultCookiePolicy):
    """Send Secure cookies to 127.0.0.1 over plain http, as browsers do for loopback.
    Production sets SESSION_COOKIE_SECURE and CSRF_COOKIE_SECURE; the test serves no TLS."""

    def return_ok_secure(self, cookie, request) -> bool:
        return urllib.parse.urlsplit(request.get_full_url()).hostname == "127.0.0.1"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # let the caller see the 302 itself


@dataclass
class Response:
    status: int
    url: str
    location: str
    body: str
    redirect: str = ""  # htmx's HX-Redirect header


class Browser:
    """A logged-in (or anonymous) client: a cookie jar and the CSRF handshake."""

    def __init__(self, base: str):
        self.base = base
        self.jar = http.cookiejar.CookieJar(policy=LoopbackCookiePolicy())
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), NoRedirect)

    def request(self, path: str, fields: dict[str, str] | None = None, referer: str = "") -> Response:
        url = urllib.parse.urljoin(self.base, path)
        data = urllib.parse.urlencode(fields).encode() if fields is not None else None
        headers = {"Referer": urllib.parse.urljoin(self.base, referer)} if referer else {}
        try:
            with self.opener.open(urllib.request.Request(url, data=data, headers=headers), timeout=30) as r:
                headers = r.headers
                return Response(
                    r.status,
                    url,
                    headers.get("Location", ""),
                    r.read().decode(),
                    headers.get("HX-Redirect", ""),
                )
        except urllib.error.HTTPError as error:  # 3xx (not followed), 4xx and 5xx
            return Response(error.code, url, error.headers.get("Location", ""), error.read().decode())

    def follow(self, path: str) -> Response:
        response = self.request(path)
        for _ in range(5):
            if response.status not in (301, 302, 303, 307, 308):
                break
            response = self.request(urllib.parse.urljoin(response.url, response.location))
        return response

    def csrf_token(self, page: Response) -> str:
        found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.body)
        if found:
            return found.group(1)
        return next(cookie.value for cookie in self.jar if cookie.name == settings.CSRF_COOKIE_NAME)

    def post_form(self, page_path: str, action: str, fields: dict[str, str]) -> Response:
        """GET the page with the form, then POST to ``action`` as a browser would."""
        page = self.request(page_path)
        assert page.status == 200, f"GET {page_path}: {page.status}\n{page.body[:2000]}"
        fields = {"csrfmiddlewaretoken": self.csrf_token(page), **fields}
        return self.request(action, fields, referer=page_path)

    def login(self, username: str, password: str) -> None:
        response = self.post_form(
            "/accounts/login/", "/accounts/login/", {"username": username, "password": password}
        )
        assert response.status == 302, f"login as {username}: {response.status}\n{response.body[:2000]}"
        assert any(cookie.name == settings.SESSION_COOKIE_NAME for cookie in self.jar)


def serves_login_page(base: str) -> bool:
    try:
        return Browser(base).request("/accounts/login/").status == 200
    except (urllib.error.URLError, ConnectionError):  # not listening yet
        return False


def static_paths(html: str) -> list[str]:
    return sorted(set(re.findall(r'(?:href|src)="(/static/[^"]+)"', html)))


# ---------------------------------------------------------------- database


@contextlib.contextmanager
def fresh_database(prefix: str = "finops_stack"):
    """Create a PostgreSQL database on the test server, yield its URL, drop it afterwards."""
    db = settings.DATABASES["default"]
    name = f"{prefix}_{secrets.token_hex(4)}"
    server = {"host": db["HOST"], "port": db["PORT"] or 5432, "user": db["USER"], "password": db["PASSWORD"]}
    admin = psycopg2.connect(dbname="postgres", **server)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        quote = urllib.parse.quote
        try:
            yield (
                f"postgres://{quote(db['USER'] or '')}:{quote(db['PASSWORD'] or '')}"
                f"@{db['HOST']}:{server['port']}/{name}"
            )
        finally:
            with admin.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


@pytest.fixture
def stack_database():
    """A fresh PostgreSQL database for the stack's processes, dropped afterwards. Not
    pytest-django's test database: the subprocesses must not share it with other tests."""
    with fresh_database() as url:
        yield url


def succeeded_run(db, trigger: str) -> dict | None:
    """The first run with this trigger that succeeded; fails at once if one failed."""
    with db.cursor() as cursor:
        cursor.execute(
            "SELECT id, status, rows_read, errors FROM finops_refreshrun WHERE trigger = %s ORDER BY id",
            [trigger],
        )
        runs = [dict(zip(("id", "status", "rows_read", "errors"), row, strict=True)) for row in cursor]
    failed = [run for run in runs if run["status"] == "failed"]
    assert not failed, f"{trigger} refresh failed: {failed}"
    return next((run for run in runs if run["status"] == "succeeded"), None)


# ---------------------------------------------------------------- the test


def test_the_stack_serves_pages_and_runs_refreshes_in_the_worker_and_on_schedule(stack_database, tmp_path):
    queue = f"finops-stack-{secrets.token_hex(4)}"
    env = {
        **os.environ,
        "FINOPS_ENV": "production",
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(64),
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "false",
        "DATABASE_URL": stack_database,
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_QUEUE": queue,  # this run's own queue on the shared Redis
        "STATIC_ROOT": str(tmp_path / "staticfiles"),
        "DJANGO_SETTINGS_MODULE": "finops.settings",
        "PYTHONUNBUFFERED": "1",
    }
    stack = Stack(tmp_path, env)
    db = psycopg2.connect(stack_database)
    db.autocommit = True  # every poll sees the latest commits
    try:
        # What the web container runs first, then the demo company and the static files. `demo`
        # refuses production settings (its logins have a published password), so it alone runs
        # with development settings, on the same database.
        stack.manage("migrate", "--noinput")
        stack.manage("bootstrap")
        stack.manage("demo", FINOPS_ENV="development", DEBUG="false")
        stack.manage("collectstatic", "--noinput")

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        web = stack.start(
            "gunicorn", BIN / "gunicorn", "finops.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "2",
            "--timeout", "120", "--access-logfile", "-", "--error-logfile", "-",
        )  # fmt: skip
        worker = stack.start(
            "worker", BIN / "celery", "-A", "finops", "worker", "--pool=solo", "--loglevel=info",
            f"--hostname={queue}@%h", "--without-mingle", "--without-gossip", "--without-heartbeat",
        )  # fmt: skip
        stack.wait("gunicorn to serve the login page", lambda: serves_login_page(base), 60)
        stack.wait_for_log(worker, " ready.")

        # Every page needs a login; the demo analyst gets one.
        anonymous = Browser(base).request("/")
        assert anonymous.status == 302
        assert anonymous.location.startswith("/accounts/login/?next=/")
        analyst = Browser(base)
        analyst.login("analyst", DEMO_PASSWORD)
        home = analyst.follow("/")
        assert home.status == 200, home.body[:2000]
        assert "/accounts/login/" not in home.url
        assets = static_paths(home.body)  # hashed names from the manifest, served by WhiteNoise
        assert assets, "the page links no static files"
        for path in assets:
            assert analyst.request(path).status == 200, path
        web_log_before_refresh = len(web.text())

        # "Refresh now": the view queues the task on commit, the worker runs it.
        queued = analyst.post_form("/data/", "/data/refresh/", {"source": "demo"})
        assert queued.status == 302, queued.body[:2000]
        assert queued.location.startswith("/data/?after="), queued.location
        manual = stack.wait("a manual run", lambda: succeeded_run(db, "manual"), RUN_TIMEOUT)
        assert manual["rows_read"] > 0
        # The Data page's progress panel, polled after Refresh now, sees the worker's run end.
        after = queued.location.partition("?")[2]
        assert analyst.request(f"/data/progress/?{after}").redirect == "/data/"
        stack.wait_for_log(worker, f"{{'run': {manual['id']}, 'status': 'succeeded'}}", timeout=10)
        assert "refresh run" not in web.text()[web_log_before_refresh:], "the web process ran the refresh"

        # Beat reads its schedule from the database and the worker runs what it sends.
        kwargs = json.dumps({"trigger": "schedule", "source_slug": "demo"})
        stack.manage(
            "shell",
            "-c",
            "from django_celery_beat.models import IntervalSchedule, PeriodicTask\n"
            "every, _ = IntervalSchedule.objects.get_or_create(every=2, period=IntervalSchedule.SECONDS)\n"
            f"PeriodicTask.objects.create(name={SCHEDULE_NAME!r}, task='finops.tasks.refresh_task',"
            f" interval=every, kwargs={kwargs!r})",
        )
        beat = stack.start(
            "beat", BIN / "celery", "-A", "finops", "beat", "--loglevel=info", "--max-interval=1",
            f"--schedule={tmp_path / 'beat-schedule'}", f"--pidfile={tmp_path / 'beat.pid'}",
        )  # fmt: skip
        scheduled = stack.wait("a scheduled run", lambda: succeeded_run(db, "schedule"), RUN_TIMEOUT)
        assert scheduled["rows_read"] > 0
        stack.wait_for_log(beat, f"Sending due task {SCHEDULE_NAME}", timeout=10)
        stack.wait_for_log(worker, f"{{'run': {scheduled['id']}, 'status': 'succeeded'}}", timeout=10)
        stack.manage(
            "shell",
            "-c",
            "from django_celery_beat.models import PeriodicTask\n"
            f"task = PeriodicTask.objects.get(name={SCHEDULE_NAME!r})\n"
            "task.enabled = False\n"
            "task.save()",
        )
    except BaseException:
        print(stack.report())
        raise
    finally:
        db.close()
        stop_stack(stack, queue)


def stop_stack(stack: Stack, queue: str) -> None:
    """Beat first (no new work), then drop this run's queued messages, then the worker and web."""
    by_name = {process.name: process for process in stack.processes}
    if "beat" in by_name:
        by_name["beat"].stop()
    broker = redis.Redis.from_url(settings.REDIS_URL)
    try:
        drop_queue(broker, queue)
        for name in ("worker", "gunicorn"):
            if name in by_name:
                by_name[name].stop()
        drop_queue(broker, queue)  # anything the worker handed back as it stopped
    finally:
        broker.close()
        for process in stack.processes:  # whatever the steps above did not reach
            if process.popen.poll() is None:
                process.stop()


def drop_queue(broker: redis.Redis, queue: str) -> None:
    """Delete this run's queue, its priority sub-queues and its bindings from Redis."""
    keys = list(broker.scan_iter(match=f"*{queue}*"))
    if keys:
        broker.delete(*keys)
