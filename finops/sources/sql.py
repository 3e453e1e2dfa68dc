"""The ``sql`` data source: one read-only query against PostgreSQL, MySQL/MariaDB or a SQLite file.

Config (``DataSource.config``; the admin edits it as a form, docs/data-sources.md has examples)::

    {
      "url": "postgresql://reader@erp.example.com:5432/erp",  # SQLAlchemy URL, no password
      "password_env": "FINOPS_SECRET_ERP_PASSWORD",  # or "password_file": "erp-password"
      "query": "SELECT posted_on, company, account, amount FROM gl_lines WHERE ...",
      "timeout_seconds": 300,
      "mapping": {...}                               # finops.sources.mapping, columns by name
    }

- The password is read when the source runs, from an environment variable or a secret file
  (``finops.sources.remote``); a URL that holds a password is refused.
- The query must be one ``SELECT`` (or ``WITH ... SELECT``) statement, checked with sqlparse; it
  runs in a read-only transaction (PostgreSQL ``default_transaction_read_only``, MySQL
  ``SET SESSION TRANSACTION READ ONLY``, SQLite opened read-only with ``query_only``), so a
  function with side effects cannot write either.
- Statement timeout: PostgreSQL ``statement_timeout``, MariaDB ``max_statement_time``, MySQL
  ``max_execution_time``, SQLite a progress handler; the whole read is also bounded by the same
  deadline in Python between batches.
- Rows are streamed (a server-side cursor for PostgreSQL and MySQL, batches of 2,000), so memory
  stays bounded whatever the result's size; only the sums per fact key are kept.
- Dialects: ``postgresql`` (psycopg2), ``mysql`` / ``mariadb`` (PyMySQL) and ``sqlite`` (a file
  inside ``FINOPS_SOURCE_FILES_DIR``, like the file source's paths).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import sqlparse
from sqlparse import tokens as T

from finops.errors import ImportRejected
from finops.loading import LoadResult
from finops.models import DataSource
from finops.sources import Report
from finops.sources.files import resolve_path
from finops.sources.mapping import ConfigInvalid, MappingConfig, validate_config
from finops.sources.pull import Pulled, pull_records
from finops.sources.remote import (
    SourceError,
    Stream,
    check_secret,
    config_rejected,
    load_source,
    preview_source,
    read_secret,
)

KEYS = ("url", "password_env", "password_file", "query", "timeout_seconds", "mapping")
DEFAULT_TIMEOUT, MAX_TIMEOUT = 300, 6 * 3600
CONNECT_TIMEOUT = 10
BATCH = 2000
MAX_QUERY = 100_000
DRIVERS = {
    "postgresql": "postgresql+psycopg2",
    "postgres": "postgresql+psycopg2",
    "postgresql+psycopg2": "postgresql+psycopg2",
    "mysql": "mysql+pymysql",
    "mysql+pymysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
    "mariadb+pymysql": "mariadb+pymysql",
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite",
}
# URL options a source may set; anything else (e.g. MySQL local_infile) is refused.
URL_OPTIONS = {"sslmode", "sslrootcert", "charset", "application_name"}
WRITING_KEYWORDS = {
    "INSERT",
    "UPDATE",
    "DELETE",
    "MERGE",
    "UPSERT",
    "REPLACE",
    "DROP",
    "ALTER",
    "CREATE",
    "TRUNCATE",
    "GRANT",
    "REVOKE",
    "COPY",
    "CALL",
    "EXEC",
    "EXECUTE",
    "INTO",
    "LOCK",
    "SET",
    "ATTACH",
    "PRAGMA",
    "VACUUM",
}


@dataclass(frozen=True)
class SqlConfig:
    url: str  # as configured (no password)
    driver: str  # the SQLAlchemy driver name used
    password_env: str
    password_file: str
    query: str
    timeout_seconds: int
    mapping: MappingConfig

    @property
    def dialect(self) -> str:
        return self.driver.split("+")[0]

    def as_json(self) -> dict:
        return {
            "url": self.url,
            "password_env": self.password_env,
            "password_file": self.password_file,
            "query": self.query,
            "timeout_seconds": self.timeout_seconds,
            "mapping": self.mapping.as_json(),
        }


def check_query(query: str) -> str | None:
    """Why ``query`` is not one read-only SELECT statement, or None when it is."""
    statements = [s for s in sqlparse.parse(query) if s.token_first(skip_cm=True, skip_ws=True) is not None]
    if not statements:
        return "empty: write one SELECT statement"
    if len(statements) > 1:
        return f"{len(statements)} statements; give exactly one SELECT (or WITH ... SELECT) statement"
    statement = statements[0]
    kind = statement.get_type()
    if kind != "SELECT":
        first = statement.token_first(skip_cm=True, skip_ws=True)
        shown = kind if kind != "UNKNOWN" else (str(first).split() or ["?"])[0].upper()
        return (
            f"not a SELECT (the statement is {shown}); "
            "only a read-only SELECT (or WITH ... SELECT) is allowed"
        )
    for token in statement.flatten():
        if token.ttype in (T.Keyword.DML, T.Keyword.DDL, T.Keyword) and token.normalized in WRITING_KEYWORDS:
            return f"{token.normalized} is not allowed in a read-only query (only a plain SELECT is)"
    return None


def _url_problems(text: str, problems: list[tuple[str, str]]) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(text)
    except (ArgumentError, ValueError) as error:
        problems.append(("url", f"not a database URL ({error}); e.g. postgresql://user@host:5432/db"))
        return ""
    driver = DRIVERS.get(url.drivername)
    if driver is None:
        problems.append(
            (
                "url",
                f"{url.drivername!r} is not supported; use postgresql://, mysql://, mariadb:// or sqlite:///",
            )
        )
        return ""
    if url.password:
        problems.append(
            (
                "url",
                "holds a password: remove it and name an environment variable or a secret file instead "
                "(passwords are never stored in the database)",
            )
        )
    for name in url.query:
        if name not in URL_OPTIONS:
            problems.append(
                ("url", f"URL option {name!r} is not allowed; use only {', '.join(sorted(URL_OPTIONS))}")
            )
    if driver == "sqlite":
        if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
            problems.append(
                ("url", "name a SQLite file: sqlite:///ledger/erp.db (inside the source files folder)")
            )
        else:
            try:
                resolve_path(url.database)
            except ValueError as error:
                problems.append(("url", str(error)))
    else:
        if not url.host:
            problems.append(("url", "no host: e.g. postgresql://reader@db.example.com:5432/erp"))
        if not url.database:
            problems.append(("url", "no database name: add it after the host, e.g. .../erp"))
    return driver


def validate_sql_config(data: Any) -> SqlConfig:
    """A typed SqlConfig, or ConfigInvalid listing every problem (the mapping's too)."""
    if not isinstance(data, dict):
        raise ConfigInvalid([("config", "must be an object")])
    problems: list[tuple[str, str]] = []
    for key in data:
        if key not in KEYS:
            problems.append((str(key), f"unknown setting; use {', '.join(KEYS)}"))
    url = data.get("url") or ""
    driver = ""
    if not isinstance(url, str) or not url.strip():
        problems.append(("url", "required: a SQLAlchemy URL such as postgresql://reader@host:5432/erp"))
        url = ""
    else:
        url = url.strip()
        driver = _url_problems(url, problems)
    env, secret_file = check_secret(data, "password_env", "password_file", problems)
    if driver == "sqlite" and (env or secret_file):
        problems.append(("password_env", "a SQLite file has no password; leave it empty"))
    query = data.get("query") or ""
    if not isinstance(query, str):
        problems.append(("query", "must be text: one SELECT statement"))
        query = ""
    query = query.strip().rstrip(";").strip()
    if len(query) > MAX_QUERY:
        problems.append(("query", f"longer than {MAX_QUERY:,} characters"))
    else:
        reason = check_query(query)
        if reason:
            problems.append(("query", reason))
    timeout = data.get("timeout_seconds", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= MAX_TIMEOUT:
        problems.append(
            ("timeout_seconds", f"{timeout!r}: a whole number of seconds from 1 to {MAX_TIMEOUT}")
        )
        timeout = DEFAULT_TIMEOUT
    mapping = None
    try:
        mapping = validate_config(data.get("mapping"))
    except ConfigInvalid as invalid:
        problems.extend(invalid.problems)
    if problems:
        raise ConfigInvalid(problems)
    return SqlConfig(
        url=url,
        driver=driver,
        password_env=env,
        password_file=secret_file,
        query=query,
        timeout_seconds=timeout,
        mapping=mapping,
    )


def parse_config(source: DataSource) -> SqlConfig:
    try:
        return validate_sql_config(source.config or {})
    except ConfigInvalid as invalid:
        raise config_rejected(source, invalid) from None


# --- connecting and reading ------------------------------------------------------------------


def _message(error: BaseException) -> str:
    """The database's own message, on one line, without SQLAlchemy's decoration."""
    orig = getattr(error, "orig", None) or error
    args = getattr(orig, "args", ())
    if len(args) >= 2 and isinstance(args[0], int) and isinstance(args[1], str):  # PyMySQL: (code, text)
        text = f"{args[1]} (error {args[0]})"
    else:
        text = str(orig)
    text = " ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return text if len(text) <= 500 else text[:497] + "..."


def _connect_error(config: SqlConfig, url, error: BaseException) -> SourceError:
    text = _message(error)
    lowered = text.lower()
    where = f"{url.host}:{url.port}" if url.port else str(url.host)
    secret = (
        f"the password in {config.password_env or config.password_file}"
        if config.password_env or config.password_file
        else "no password (none is configured)"
    )
    if any(
        marker in lowered
        for marker in (
            "password authentication failed",
            "access denied",
            "no password supplied",
            "authentication",
        )
    ):
        return SourceError(
            f"the database refused the login of user {url.username!r} ({secret}): {text}", column="password"
        )
    if any(
        marker in lowered
        for marker in (
            "could not translate host name",
            "name or service not known",
            "unknown mysql server host",
            "nodename nor servname",
            "temporary failure in name resolution",
            "getaddrinfo failed",
        )
    ):
        return SourceError(f"unknown host {url.host!r}: no address found for it ({text})", column="url")
    if "does not exist" in lowered or "unknown database" in lowered:
        return SourceError(f"no database {url.database!r} on {where}: {text}", column="url")
    return SourceError(f"cannot connect to {where}: {text}", column="url")


def _is_timeout(text: str) -> bool:
    lowered = text.lower()
    return any(
        marker in lowered
        for marker in (
            "statement timeout",
            "max_statement_time",
            "maximum statement execution time exceeded",
            "max_execution_time",
            "interrupted",
            "query execution was interrupted",
        )
    )


def _engine(config: SqlConfig, password: str | None):
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    url = make_url(config.url).set(drivername=config.driver)
    if config.dialect == "sqlite":
        path = resolve_path(url.database)
        if not path.is_file():
            what = "not a regular file" if path.exists() else "no such file"
            raise SourceError(f"the SQLite database {url.database}: {what} ({path})", column="url")
        deadline_box = {}

        def creator():
            connection = sqlite3.connect(
                f"file:{quote(str(path))}?mode=ro", uri=True, check_same_thread=False
            )
            connection.execute("PRAGMA query_only = ON")
            connection.set_progress_handler(
                lambda: 1 if time.monotonic() > deadline_box.get("deadline", float("inf")) else 0, 10_000
            )
            return connection

        engine = create_engine("sqlite://", creator=creator, poolclass=NullPool)
        engine.finops_deadline = deadline_box
        return url, engine
    if password is not None:
        url = url.set(password=password)
    timeout_ms = config.timeout_seconds * 1000
    if config.dialect == "postgresql":
        connect_args = {
            "connect_timeout": CONNECT_TIMEOUT,
            "options": f"-c statement_timeout={timeout_ms} -c default_transaction_read_only=on",
        }
    else:
        connect_args = {
            "connect_timeout": CONNECT_TIMEOUT,
            "read_timeout": config.timeout_seconds + 30,
            "local_infile": False,
        }
    return url, create_engine(url, poolclass=NullPool, connect_args=connect_args)


def describe(config: SqlConfig) -> str:
    from sqlalchemy.engine import make_url

    url = make_url(config.url)
    if config.dialect == "sqlite":
        where = f"SQLite file {url.database}"
    else:
        where = f"{config.dialect} database {url.database} on {url.host}{f':{url.port}' if url.port else ''}"
        where += f" as {url.username}" if url.username else ""
    secret = ""
    if config.password_env:
        secret = f", password from ${config.password_env}"
    elif config.password_file:
        secret = f", password from the secret file {config.password_file}"
    return f"{where}{secret}; read-only query, timeout {config.timeout_seconds} s"


@contextmanager
def open_query(source: DataSource, config: SqlConfig) -> Iterator[Stream]:
    """Run the query in a read-only transaction and stream its rows (SourceError on failure)."""
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    password = read_secret(
        config.password_env, config.password_file, what="database password", column="password"
    )
    url, engine = _engine(config, password)
    deadline = time.monotonic() + config.timeout_seconds
    if hasattr(engine, "finops_deadline"):
        engine.finops_deadline["deadline"] = deadline
    timeout = (
        f"the query ran past its timeout of {config.timeout_seconds} s (timeout_seconds) and was cancelled"
    )
    try:
        try:
            connection = engine.connect()
        except (DBAPIError, SQLAlchemyError) as error:
            raise _connect_error(config, url, error) from None
        with connection:
            plain = connection.execution_options(no_parameters=True)
            try:
                if config.dialect == "mysql":
                    plain.exec_driver_sql("SET SESSION TRANSACTION READ ONLY")
                    if engine.dialect.is_mariadb:
                        plain.exec_driver_sql(f"SET SESSION max_statement_time = {config.timeout_seconds}")
                    else:
                        plain.exec_driver_sql(
                            f"SET SESSION max_execution_time = {config.timeout_seconds * 1000}"
                        )
                    plain.rollback()
                streaming = config.dialect != "sqlite"
                result = plain.execution_options(
                    stream_results=streaming, max_row_buffer=BATCH
                ).exec_driver_sql(config.query)
            except DBAPIError as error:
                text = _message(error)
                if _is_timeout(text) or time.monotonic() > deadline:
                    raise SourceError(f"{timeout}: {text}", column="query") from None
                raise SourceError(f"the database refused the query: {text}", column="query") from None
            header = [str(name) for name in result.keys()]  # noqa: SIM118 - a Result, not a dict

            def rows() -> Iterator[tuple[int, Any]]:
                number = 0
                try:
                    while True:
                        batch = result.fetchmany(BATCH)
                        if not batch:
                            return
                        for row in batch:
                            number += 1
                            yield number, row
                        if time.monotonic() > deadline:
                            raise SourceError(timeout, column="query")
                except DBAPIError as error:
                    text = _message(error)
                    if _is_timeout(text) or time.monotonic() > deadline:
                        raise SourceError(f"{timeout}: {text}", column="query") from None
                    raise SourceError(
                        f"the database failed while sending rows: {text}", column="query"
                    ) from None

            try:
                yield Stream(
                    name=f"query of {source.slug}",
                    origin=describe(config),
                    header=header,
                    records=rows(),
                    where="the query's result",
                    empty="the query returned no rows; nothing to load",
                )
            finally:
                result.close()
                connection.rollback()
    finally:
        engine.dispose()


# --- the loader and the preview --------------------------------------------------------------


def load(source: DataSource, *, report: Report, pulled: Pulled | None = None) -> LoadResult:
    """Run the source's query and load its rows, all or nothing (live, or from the records pulled ahead)."""
    return load_source(source, parse_config, open_query, report=report, pulled=pulled)


def pull(source: DataSource, stop: threading.Event | None = None) -> Pulled:
    """Read every record into a spool, ahead of the load (in a pull thread; see finops.sources.pull)."""
    return pull_records(source, parse_config, open_query, stop)


def preview(source: DataSource, **limits):
    """What "Test connection / preview" shows for a SQL source (nothing is written)."""
    return preview_source(source, parse_config, open_query, origin=describe, **limits)


__all__ = ["ImportRejected", "SqlConfig", "check_query", "load", "preview", "validate_sql_config"]
