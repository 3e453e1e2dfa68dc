"""Benchmark of the scorecard page under load against the quality bar in PRODUCT.md.

The bar: the scorecard page's server time within 2 x that of a trivial page that reads one
table. The trivial page is ``GET /departments/``: logged in like every page of the app, one
table read (the departments) and rendered in the same layout. The ratios against
``/health/`` (JSON, one query, no layout) with and without the session cookie are printed
beside it.

The server is what docker-compose.yml's web service runs: gunicorn serving ``finops.wsgi``
with sync workers (``--workers 2`` by default), production settings over plain http
(``FINOPS_ENV=production``, ``DEBUG=false``, ``SECURE_SSL_REDIRECT=false``, a random
``SECRET_KEY``, ``collectstatic`` into a temporary ``STATIC_ROOT`` with WhiteNoise's compressed
manifest storage), against a fresh PostgreSQL database (``finops_bench_scorecard``, dropped and
recreated) holding the demo company (``manage.py demo``, run with development settings since it
refuses production; the same database). ``--settings development`` serves with
``FINOPS_ENV=development DEBUG=false`` instead (WhiteNoise from the app folders, no hashed
names or gzip variants, one database connection per request).

The load comes from a second process: ``wrk`` when it is on PATH, else a pool of Python
client processes (http.client); the output says which. Each page gets the same number of
concurrent connections for the same time after a warm-up, in rounds that take turns over the
pages (so that other work on the machine weighs on every page alike); the pages behind a login
get the session cookie of the demo analyst, logged in once through /accounts/login/ (CSRF
token + session cookie).

Figures, per page: requests/s, client latency (mean, p95), and the server time that gunicorn
itself records per request in its access log (``%(D)s``: from the request parsed to the
response written, the WSGI application included, the accept queue and the client not). The
bar is on that mean server time; the inverse throughput ratio and the client latency ratio are
printed beside it as cross-checks.

Bytes: the scorecard page loaded as a browser with an empty cache would load it (the HTML,
then every stylesheet, script, icon and image it references, and what the stylesheets
reference), with ``Accept-Encoding: gzip``, counted as transferred (response headers + body as
sent, compressed when the server compressed it); then the repeat load, counting only what a
browser would fetch again given the headers observed: nothing for a response still fresh
(``max-age`` > 0 or ``immutable``, no ``no-cache``), a conditional request for one with a
validator (its 304 counted), the whole response otherwise.

    python tests/bench/bench_scorecard.py [--rounds N] [--seconds S] [--connections N]
        [--workers N] [--loadgen auto|wrk|python] [--settings production|development] [--keep]

It prints a skip message and exits 0 when DATABASE_URL is not PostgreSQL; it exits 1 when
the bar is missed or a page does not answer 200 under load.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import html.parser
import http.client
import json
import multiprocessing
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BENCH_DB = "finops_bench_scorecard"  # not bench_engine's finops_bench: both may run at once
BAR = 2.0  # scorecard server time / trivial page server time
USERNAME = "analyst"  # a demo login (finops.roles.DEMO_USERS)
PAGES = [  # (key, label, path, sent with the session cookie)
    ("trivial", "/health/ (trivial page, 1 query)", "/health/", False),
    ("trivial+session", "/health/ with a session cookie", "/health/", True),
    ("layout", "/departments/ (1 table, in the layout)", "/departments/", True),
    ("scorecard", "/scorecard/", "/scorecard/", True),
    ("overview", "/overview/", "/overview/", True),
]
ACCESS_FORMAT = "%(U)s %(s)s %(D)s %(B)s"  # path, status, microseconds, body bytes

WRK_SCRIPT = """
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format('WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, '
    .. '"mean_us": %.1f, "p95_us": %.1f, "errors": %d}\\n',
    summary.requests, summary.duration, summary.bytes, latency.mean, latency:percentile(95.0), errors))
end
"""


# --- database -------------------------------------------------------------------------------


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def admin_connection(url: str):
    import psycopg2

    connection = psycopg2.connect(with_database(url, "postgres"))
    connection.autocommit = True
    return connection


def recreate_database(url: str, name: str) -> None:
    connection = admin_connection(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        connection.close()


def drop_database(url: str, name: str) -> None:
    connection = admin_connection(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        connection.close()


# --- the server -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_env(mode: str, database_url: str, static_root: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"FINOPS_ENV", "DEBUG", "SECRET_KEY", "ALLOWED_HOSTS", "REDIS_URL", "LOG_LEVEL"}
    }
    env.update(
        {
            "DATABASE_URL": database_url,
            "DEBUG": "false",
            "ALLOWED_HOSTS": "127.0.0.1",
            "STATIC_ROOT": str(static_root),
            "DJANGO_SETTINGS_MODULE": "finops.settings",
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if mode == "production":
        env.update(
            {
                "FINOPS_ENV": "production",
                "SECRET_KEY": secrets.token_urlsafe(64),
                "SECURE_SSL_REDIRECT": "false",  # plain http on loopback, as docker-compose's default
            }
        )
    else:
        env["FINOPS_ENV"] = "development"
    return env


def manage(env: dict[str, str], *args: str, **override: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**env, **override},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


@dataclass
class Server:
    popen: subprocess.Popen
    log: Path
    access_log: Path
    port: int

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        """SIGTERM (gunicorn stops its workers gracefully), then SIGKILL its process group."""
        if self.popen.poll() is None:
            self.popen.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)


def start_gunicorn(env: dict[str, str], workers: int, tmp: Path) -> Server:
    port = free_port()
    log, access = tmp / "gunicorn.log", tmp / "access.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [
                str(BIN / "gunicorn"), "finops.wsgi", "--bind", f"127.0.0.1:{port}",
                "--workers", str(workers), "--threads", "1", "--worker-class", "sync",
                "--timeout", "60", "--access-logfile", str(access), "--access-logformat", ACCESS_FORMAT,
                "--error-logfile", "-",
            ],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    server = Server(popen, log, access, port)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not server.alive():
            raise SystemExit(f"gunicorn exited:\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(OSError):
            if fetch(port, "/health/").status == 200:
                return server
        time.sleep(0.25)
    server.stop()
    raise SystemExit(
        f"gunicorn did not answer /health/ within 60 s:\n{log.read_text(errors='replace')[-3000:]}"
    )


# --- HTTP -----------------------------------------------------------------------------------


@dataclass
class Fetched:
    path: str
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes  # as sent (still compressed when Content-Encoding says so)
    header_bytes: int
    set_cookies: list[str] = field(default_factory=list)

    @property
    def transferred(self) -> int:
        return self.header_bytes + len(self.body)

    def text(self) -> str:
        raw = gzip.decompress(self.body) if self.headers.get("content-encoding") == "gzip" else self.body
        return raw.decode("utf-8", errors="replace")


def fetch(
    port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET", body: str | None = None
) -> Fetched:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        content = response.read()
        items = response.msg.items()
        status_line = f"HTTP/1.1 {response.status} {response.reason}\r\n"
        header_bytes = len(status_line) + sum(len(f"{k}: {v}\r\n") for k, v in items) + 2
        return Fetched(
            path=path,
            status=response.status,
            headers={k.lower(): v for k, v in items},
            body=content,
            header_bytes=header_bytes,
            set_cookies=response.msg.get_all("Set-Cookie") or [],
        )
    finally:
        connection.close()


def cookie_values(set_cookies: list[str]) -> dict[str, str]:
    return dict(cookie.split(";", 1)[0].strip().split("=", 1) for cookie in set_cookies)


def log_in(port: int, username: str, password: str) -> str:
    """The Cookie header of a session logged in through the login form (CSRF handshake)."""
    page = fetch(port, "/accounts/login/")
    if page.status != 200:
        raise SystemExit(f"GET /accounts/login/ answered {page.status}")
    cookies = cookie_values(page.set_cookies)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text())
    if token is None or "csrftoken" not in cookies:
        raise SystemExit("the login page has no CSRF token")
    form = urllib.parse.urlencode(
        {"csrfmiddlewaretoken": token.group(1), "username": username, "password": password}
    )
    answer = fetch(
        port,
        "/accounts/login/",
        {
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"csrftoken={cookies['csrftoken']}",
            "Referer": f"http://127.0.0.1:{port}/accounts/login/",
        },
        method="POST",
        body=form,
    )
    cookies.update(cookie_values(answer.set_cookies))
    if answer.status != 302 or "sessionid" not in cookies:
        raise SystemExit(f"logging in as {username} failed: {answer.status}\n{answer.text()[:2000]}")
    return f"csrftoken={cookies['csrftoken']}; sessionid={cookies['sessionid']}"


# --- load -----------------------------------------------------------------------------------


@dataclass
class Load:
    requests: int
    seconds: float
    mean_ms: float
    p95_ms: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def wrk_load(port: int, path: str, cookie: str, seconds: float, connections: int, script: Path) -> Load:
    argv = [
        "wrk",
        "-t",
        "1",
        "-c",
        str(connections),
        "-d",
        f"{seconds:g}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
    ]
    if cookie:
        argv += ["-H", f"Cookie: {cookie}"]
    done = subprocess.run(
        [*argv, f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    line = next((line for line in done.stdout.splitlines() if line.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    figures = json.loads(line.removeprefix("WRK_JSON "))
    return Load(
        requests=figures["requests"],
        seconds=figures["duration_us"] / 1e6,
        mean_ms=figures["mean_us"] / 1000,
        p95_ms=figures["p95_us"] / 1000,
        errors=figures["errors"],
    )


def python_client(job: tuple[int, str, str, float]) -> tuple[list[float], int]:
    """One client process: requests one after another until the deadline (the server closes
    the connection after each response, as gunicorn's sync workers do; http.client reopens)."""
    port, path, cookie, deadline = job
    headers = {"Cookie": cookie} if cookie else {}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies, errors = [], 0
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                errors += 1
            if response.will_close:
                connection.close()
        except (OSError, http.client.HTTPException):
            errors += 1
            connection.close()
            continue
        latencies.append(time.perf_counter() - started)
    connection.close()
    return latencies, errors


def python_load(port: int, path: str, cookie: str, seconds: float, connections: int) -> Load:
    context = multiprocessing.get_context("fork")
    with context.Pool(connections) as pool:
        started = time.monotonic()
        results = pool.map(python_client, [(port, path, cookie, started + seconds)] * connections)
        elapsed = time.monotonic() - started
    latencies = sorted(latency for values, _ in results for latency in values)
    if not latencies:
        raise SystemExit(f"no request to {path} succeeded")
    return Load(
        requests=len(latencies),
        seconds=elapsed,
        mean_ms=statistics.fmean(latencies) * 1000,
        p95_ms=latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] * 1000,
        errors=sum(errors for _, errors in results),
    )


@dataclass
class ServerSide:
    """gunicorn's own time for each request, in ms, and the statuses it answered."""

    times: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.times) if self.times else float("nan")

    @property
    def p95_ms(self) -> float:
        ordered = sorted(self.times)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else float("nan")

    def add(self, other: ServerSide) -> None:
        self.times += other.times
        for status, count in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + count


def server_side(access_log: Path, offset: int, path: str) -> ServerSide:
    """What gunicorn recorded for ``path`` after ``offset`` in its access log."""
    with access_log.open("rb") as log:
        log.seek(offset)
        lines = log.read().decode(errors="replace").splitlines()
    recorded = ServerSide()
    for line in lines:
        parts = line.split()
        if len(parts) != 4 or parts[0] != path:
            continue
        recorded.statuses[parts[1]] = recorded.statuses.get(parts[1], 0) + 1
        recorded.times.append(int(parts[2]) / 1000)
    return recorded


def combined(rounds: list[Load]) -> Load:
    """The rounds of one page as one: requests and time added, the mean weighted by requests;
    the p95 is the median of the rounds' p95 (wrk reports percentiles, not samples)."""
    requests = sum(load.requests for load in rounds)
    return Load(
        requests=requests,
        seconds=sum(load.seconds for load in rounds),
        mean_ms=sum(load.mean_ms * load.requests for load in rounds) / max(requests, 1),
        p95_ms=statistics.median(load.p95_ms for load in rounds),
        errors=sum(load.errors for load in rounds),
    )


# --- bytes of a page load -------------------------------------------------------------------


class AssetParser(html.parser.HTMLParser):
    """Every resource a browser loads for the page: stylesheets, icons, scripts, images."""

    LINK_RELS = {"stylesheet", "icon", "shortcut", "apple-touch-icon", "preload", "modulepreload", "manifest"}

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "link" and set((found.get("rel") or "").lower().split()) & self.LINK_RELS:
            self.urls.append(found.get("href") or "")
        elif tag in {"script", "img", "source", "iframe"} and found.get("src"):
            self.urls.append(found["src"] or "")


CSS_URL = re.compile(r"""url\(\s*['"]?([^'")]+)['"]?\s*\)|@import\s+['"]([^'"]+)['"]""")


def same_origin_path(url: str, base: str, port: int) -> str | None:
    """The path to fetch for ``url`` as referenced from ``base``; None for data: and other hosts."""
    if not url or url.startswith(("data:", "#", "about:")):
        return None
    absolute = urllib.parse.urljoin(f"http://127.0.0.1:{port}{base}", url)
    parts = urlsplit(absolute)
    if parts.netloc != f"127.0.0.1:{port}":
        return "EXTERNAL:" + absolute
    return parts.path + (f"?{parts.query}" if parts.query else "")


def first_load(port: int, cookie: str, page: str) -> tuple[list[Fetched], list[str]]:
    """The page and everything it references, fetched once each as an empty-cache browser would."""
    headers = {"Cookie": cookie, "Accept-Encoding": "gzip"}
    fetched = [fetch(port, page, headers)]
    parser = AssetParser()
    parser.feed(fetched[0].text())
    queue = [(url, page) for url in parser.urls]
    seen, external = {page}, []
    while queue:
        url, base = queue.pop(0)
        path = same_origin_path(url, base, port)
        if path is None or path in seen:
            continue
        seen.add(path)
        if path.startswith("EXTERNAL:"):
            external.append(path.removeprefix("EXTERNAL:"))
            continue
        asset = fetch(port, path, {"Accept-Encoding": "gzip"})  # same-origin static: no cookie needed
        fetched.append(asset)
        if asset.headers.get("content-type", "").startswith("text/css"):
            for match in CSS_URL.finditer(asset.text()):
                queue.append((match.group(1) or match.group(2), path))
    return fetched, external


def max_age(cache_control: str) -> int | None:
    found = re.search(r"max-age=(\d+)", cache_control)
    return int(found.group(1)) if found else None


def repeat_load(port: int, cookie: str, first: list[Fetched]) -> list[tuple[Fetched, str, int]]:
    """(first response, what the browser does on a repeat visit, bytes transferred then)."""
    rows = []
    for index, response in enumerate(first):
        cache = response.headers.get("cache-control", "").lower()
        fresh = ("immutable" in cache or (max_age(cache) or 0) > 0) and not (
            "no-cache" in cache or "no-store" in cache
        )
        headers = {"Accept-Encoding": "gzip"}
        if index == 0:
            headers["Cookie"] = cookie
        if fresh:
            rows.append((response, f"from cache ({cache})", 0))
            continue
        validators = {}
        if "no-store" not in cache:
            if "etag" in response.headers:
                validators["If-None-Match"] = response.headers["etag"]
            if "last-modified" in response.headers:
                validators["If-Modified-Since"] = response.headers["last-modified"]
        again = fetch(port, response.path, {**headers, **validators})
        what = "revalidated" if validators else "fetched again"
        rows.append(
            (response, f"{what}: {again.status} (cache-control: {cache or 'none'})", again.transferred)
        )
    return rows


# --- report ---------------------------------------------------------------------------------


def kb(count: int) -> str:
    return f"{count / 1024:,.1f} KB"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds over the pages, interleaved (default 5)"
    )
    parser.add_argument(
        "--seconds", type=int, default=2, help="seconds of load per page per round (default 2)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up per page (default 1)")
    parser.add_argument("--connections", type=int, default=2, help="concurrent connections (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers (default 2)")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--settings", choices=["production", "development"], default="production")
    parser.add_argument("--keep", action="store_true", help=f"keep the {BENCH_DB} database afterwards")
    args = parser.parse_args()

    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        print(
            "bench_scorecard: SKIPPED - needs PostgreSQL; set DATABASE_URL=postgres://... (make bench does)"
        )
        return 0
    wrk = shutil.which("wrk")
    if args.loadgen == "wrk" and not wrk:
        raise SystemExit("--loadgen wrk: wrk is not on PATH (Debian: apt-get install wrk)")
    use_wrk = bool(wrk) and args.loadgen != "python"

    started = time.perf_counter()
    server: Server | None = None
    tmp = Path(tempfile.mkdtemp(prefix="bench_scorecard_"))
    database_url = with_database(url, BENCH_DB)
    recreate_database(url, BENCH_DB)
    try:
        env = server_env(args.settings, database_url, tmp / "static")
        manage(env, "migrate", "--noinput")
        manage(env, "bootstrap")
        manage(env, "demo", FINOPS_ENV="development")  # refuses production: its logins are published
        password = manage(
            env, "shell", "--no-imports", "-c", "from finops.roles import DEMO_PASSWORD; print(DEMO_PASSWORD)"
        )
        if args.settings == "production":
            manage(env, "collectstatic", "--noinput")
        prepared = time.perf_counter() - started
        server = start_gunicorn(env, args.workers, tmp)
        cookie = log_in(server.port, USERNAME, password.split()[-1])
        script = tmp / "report.lua"
        script.write_text(WRK_SCRIPT)

        def load(path: str, cookie: str, seconds: float) -> Load:
            if use_wrk:
                return wrk_load(server.port, path, cookie, seconds, args.connections, script)
            return python_load(server.port, path, cookie, seconds, args.connections)

        generator = f"wrk ({wrk}), 1 thread" if use_wrk else "Python clients (multiprocessing + http.client)"
        print(
            f"bench_scorecard: gunicorn {args.workers} sync workers, FINOPS_ENV={args.settings} DEBUG=false, "
            f"demo company in {BENCH_DB} (prepared in {prepared:.0f} s); load: {generator}, "
            f"{args.connections} connections; per page {args.warmup} s warm-up, then {args.rounds} rounds of "
            f"{args.seconds} s, the pages taking turns (background load hits them alike)",
            flush=True,
        )

        for _, _, path, needs_login in PAGES:
            page_cookie = cookie if needs_login else ""
            check = fetch(server.port, path, {"Cookie": page_cookie} if page_cookie else {})
            if check.status != 200:
                raise SystemExit(f"GET {path} answered {check.status}:\n{check.text()[:2000]}")
            load(path, page_cookie, args.warmup)
        rounds: dict[str, list[tuple[Load, ServerSide]]] = {key: [] for key, *_ in PAGES}
        for _ in range(args.rounds):
            for key, _, path, needs_login in PAGES:
                offset = server.access_log.stat().st_size
                measured = load(path, cookie if needs_login else "", args.seconds)
                time.sleep(0.1)  # the last access-log lines
                rounds[key].append((measured, server_side(server.access_log, offset, path)))

        # Bytes: the scorecard page on a first visit, then on a repeat visit.
        first, external = first_load(server.port, cookie, "/scorecard/")
        repeat = repeat_load(server.port, cookie, first)
        if not server.alive():
            raise SystemExit(f"gunicorn died:\n{server.log.read_text(errors='replace')[-3000:]}")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        if not args.keep:
            drop_database(url, BENCH_DB)

    # --- report -------------------------------------------------------------------------------
    print()
    print("FinOps Review scorecard page benchmark")
    print(
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs; load generator and server on one machine"
    )
    print()
    header = f"  {'page':<34}{'req/s':>9}{'mean ms':>10}{'p95 ms':>9}   {'server mean':>12}{'server p95':>11}"
    print(header + "   requests")
    print(f"  {'':<34}{'client, under load (1)':>28}   {'gunicorn %(D)s (2)':>23}")
    problems = []
    results: dict[str, tuple[Load, ServerSide]] = {}
    for key, label, _, _ in PAGES:
        recorded = ServerSide()
        for _, part in rounds[key]:
            recorded.add(part)
        measured = combined([load for load, _ in rounds[key]])
        results[key] = (measured, recorded)
        print(
            f"  {label:<34}{measured.rps:>9,.1f}{measured.mean_ms:>10.2f}{measured.p95_ms:>9.2f}   "
            f"{recorded.mean_ms:>12.2f}{recorded.p95_ms:>11.2f}   {measured.requests:,}"
        )
        bad = {status: count for status, count in recorded.statuses.items() if status != "200"}
        if measured.errors or bad or not recorded.times:
            problems.append(f"{label}: {measured.errors} client errors, statuses {recorded.statuses}")
    trivial_load, trivial = results["trivial"]
    session_load, session = results["trivial+session"]
    layout_load, layout = results["layout"]
    card_load, card = results["scorecard"]
    ratio = card.mean_ms / layout.mean_ms
    print()
    print("  (1) req/s and latency seen by the load generator; p95 is the median of the rounds' p95")
    print(
        "  (2) server time = the mean of gunicorn's own per-request time (%(D)s in its access log: from the"
    )
    print("  request parsed to the response written; Django and the database included, the accept queue")
    print("  and the client not). Ratio = page server time / trivial page server time. Cross-checks: the")
    print("  inverse throughput ratio (trivial req/s / page req/s, same connections) and the client mean")
    print("  latency ratio. The bar compares with the trivial page of the app: /departments/, logged in, one")
    print("  table read and rendered in the same layout as every page. Informational: /health/ with the")
    print("  session cookie (JSON, no layout) and without (a load balancer's probe).")
    for key, name in (("scorecard", "/scorecard/"), ("overview", "/overview/ (informational)")):
        measured, recorded = results[key]
        print(
            f"  {name:<27} server time {recorded.mean_ms / layout.mean_ms:5.2f} x trivial page "
            f"({recorded.mean_ms / session.mean_ms:5.2f} x /health/ logged in, "
            f"{recorded.mean_ms / trivial.mean_ms:5.2f} x anonymous);  "
            f"inverse throughput {layout_load.rps / measured.rps:5.2f} x;  "
            f"client mean {measured.mean_ms / layout_load.mean_ms:5.2f} x"
        )
    per_round = sorted(
        page.mean_ms / base.mean_ms
        for (_, page), (_, base) in zip(rounds["scorecard"], rounds["layout"], strict=True)
    )
    print(
        "  /scorecard/ server time ratio in each round: "
        + ", ".join(f"{value:.2f}" for value in per_round)
        + " (spread = noise from the machine)"
    )

    print()
    print("  /scorecard/ bytes transferred (response headers + body as sent; Accept-Encoding: gzip)")
    first_total = sum(response.transferred for response in first)
    repeat_total = sum(bytes_ for _, _, bytes_ in repeat)
    for response, action, again in repeat:
        encoding = response.headers.get("content-encoding", "identity")
        first_bytes = kb(response.transferred)
        print(
            f"    {response.path[:64]:<64} {response.status} {encoding:<8} first {first_bytes:>10}  "
            f"repeat {kb(again):>9}  {action}"
        )
    if first[0].headers.get("content-encoding") != "gzip":
        print("    (the HTML itself is sent uncompressed: nothing in the app gzips pages; a TLS proxy may)")
    for address in external:
        print(f"    EXTERNAL (not counted, should not exist: no CDN): {address}")
    print(f"    first load, empty cache: {len(first)} requests, {kb(first_total)} ({first_total:,} bytes)")
    fetched_again = sum(1 for _, _, again in repeat if again)
    print(
        f"    repeat load, with cache: {fetched_again} requests, {kb(repeat_total)} ({repeat_total:,} bytes)"
    )

    print()
    ok = ratio <= BAR and not problems
    for problem in problems:
        print(f"  PROBLEM {problem}")
    print(
        f"  scorecard server time / trivial page server time = {ratio:.2f} x   (bar <= {BAR})   {verdict(ok)}"
    )
    print(f"\n  total bench time {time.perf_counter() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
