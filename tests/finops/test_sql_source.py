"""The SQL data source against real databases that are not the app's own: a PostgreSQL database
and a MariaDB database created and filled here, and a SQLite file.

PostgreSQL and MariaDB tests skip, saying why, when the server is not reachable (``make test``
runs them when it is). Each bad case ends with a clear message on the run and the facts exactly
as they were; a good load twice changes nothing.
"""

from __future__ import annotations

import os
import socket
import sqlite3

import pytest
from django.urls import reverse

from finops.models import DataSource, FinancialFact, RefreshRun
from finops.refresh import refresh
from finops.sources import LOADERS, Report, loader_for, sql
from finops.sources.mapping import ConfigInvalid
from tests import factories
from tests.finops.source_checks import GOOD_FACTS, facts, good_then_bad, snapshot

pytestmark = pytest.mark.django_db


PG_HOST, PG_PORT = os.environ.get("FINOPS_TEST_PG_HOST", "127.0.0.1"), 5432
MARIADB_HOST, MARIADB_PORT = os.environ.get("FINOPS_TEST_MARIADB_HOST", "127.0.0.1"), 3306

MAPPING = {
    "fact_kind": "financial",
    "columns": {"date": "posted_on", "entity": "company", "account": "gl_account", "amount": "amount"},
    "constants": {"department": "sales", "scenario": "actual"},
}
QUERY = "SELECT posted_on, company, gl_account, amount FROM gl_lines ORDER BY id"
# Jan 4000: 1200.50 + 300 (same key: they add up) = 1500.50; Feb 4000: 999.99; Feb 1000: 5000.
LINES = [
    ("2024-01-15", "acme", "4000", "1200.50"),
    ("2024-01-20", "acme", "4000", "300.00"),
    ("2024-02-03", "acme", "4000", "999.99"),
    ("2024-02-29", "acme", "1000", "5000.00"),
]


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(autouse=True)
def folders(settings, tmp_path):
    settings.FINOPS_SOURCE_FILES_DIR = tmp_path / "sources"
    settings.FINOPS_SOURCE_SECRETS_DIR = tmp_path / "secrets"
    (tmp_path / "sources").mkdir()
    (tmp_path / "secrets").mkdir()
    return tmp_path


@pytest.fixture(autouse=True)
def real_loader(monkeypatch):
    monkeypatch.setitem(LOADERS, DataSource.Kind.SQL, "finops.sources.sql")


@pytest.fixture
def dims():
    return factories.dimensions()


def sql_source(url: str, query: str = QUERY, slug: str = "erp", **config) -> DataSource:
    return DataSource.objects.create(
        slug=slug,
        name=slug.upper(),
        kind=DataSource.Kind.SQL,
        config={"url": url, "query": query, "timeout_seconds": 5, "mapping": MAPPING, **config},
    )


def loads_twice_without_change(source: DataSource) -> None:
    first = refresh(source_slug=source.slug)
    assert first.status == RefreshRun.Status.SUCCEEDED, first.errors
    assert facts() == GOOD_FACTS
    assert first.rows_read == 4 and first.rows_inserted == 3
    before = snapshot()
    second = refresh(source_slug=source.slug)
    assert second.status == RefreshRun.Status.SUCCEEDED, second.errors
    assert (second.rows_inserted, second.rows_updated, second.rows_deleted) == (0, 0, 0)
    assert snapshot() == before


# --- PostgreSQL: a separate database created and filled by the test --------------------------


@pytest.fixture
def pg_database():
    """A PostgreSQL database of its own (not the app's), dropped afterwards."""
    if not reachable(PG_HOST, PG_PORT):
        pytest.skip(
            f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT}; the SQL source's PostgreSQL tests need it"
        )
    import psycopg2

    name = f"finops_sql_source_{os.getpid()}"
    admin = psycopg2.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {name}")
        cursor.execute(f"CREATE DATABASE {name}")
    try:
        with (
            psycopg2.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname=name) as db,
            db.cursor() as cursor,
        ):
            cursor.execute(
                "CREATE TABLE gl_lines (id serial PRIMARY KEY, posted_on date, company text, "
                "gl_account text, amount numeric(18, 2))"
            )
            cursor.executemany(
                "INSERT INTO gl_lines (posted_on, company, gl_account, amount) VALUES (%s, %s, %s, %s)", LINES
            )
            cursor.execute("CREATE TABLE audit (n int)")
        yield f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}", name
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def test_postgresql_loads_the_query_streamed_and_twice_changes_nothing(dims, pg_database):
    url, _name = pg_database
    loads_twice_without_change(sql_source(url))


def test_postgresql_query_past_its_timeout_is_cancelled(dims, pg_database):
    url, _name = pg_database
    source = sql_source(url)
    run = good_then_bad(
        source,
        timeout_seconds=1,
        query="SELECT posted_on, company, gl_account, amount, pg_sleep(3) FROM gl_lines",
    )
    message = run.errors[0]["reason"]
    assert "ran past its timeout of 1 s" in message and "statement timeout" in message
    assert run.errors[0]["column"] == "query"


def test_postgresql_bad_query_reports_the_database_message(dims, pg_database):
    url, _name = pg_database
    run = good_then_bad(
        sql_source(url), query="SELECT posted_on, company, gl_account, amount FROM no_such_table"
    )
    reason = run.errors[0]["reason"]
    assert "the database refused the query" in reason and 'relation "no_such_table" does not exist' in reason


def test_postgresql_runs_the_query_read_only(dims, pg_database):
    """Even a function with side effects cannot write: the transaction is read-only."""
    url, name = pg_database
    import psycopg2

    with (
        psycopg2.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname=name) as db,
        db.cursor() as cursor,
    ):
        cursor.execute(
            "CREATE FUNCTION sneaky() RETURNS int AS "
            "$$ INSERT INTO audit VALUES (1); SELECT 1 $$ LANGUAGE sql"
        )
    run = good_then_bad(
        sql_source(url), query="SELECT posted_on, company, gl_account, amount, sneaky() AS s FROM gl_lines"
    )
    assert "read-only transaction" in run.errors[0]["reason"]
    with (
        psycopg2.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname=name) as db,
        db.cursor() as cursor,
    ):
        cursor.execute("SELECT count(*) FROM audit")
        assert cursor.fetchone() == (0,)


def test_postgresql_unknown_host_and_unknown_database(dims, pg_database):
    _url, _name = pg_database
    source = sql_source("postgresql://postgres@no-such-host.invalid:5432/erp")
    with pytest.raises(Exception) as caught:
        loader_for(source)(source, report=Report())
    assert "unknown host 'no-such-host.invalid'" in str(caught.value)
    source.config["url"] = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/finops_no_such_db"
    source.save()
    with pytest.raises(Exception) as caught:
        loader_for(source)(source, report=Report())
    assert "no database 'finops_no_such_db'" in str(caught.value)


# --- MariaDB / MySQL ----------------------------------------------------------------------------


@pytest.fixture
def mariadb_database():
    if not reachable(MARIADB_HOST, MARIADB_PORT):
        pytest.skip(
            f"MariaDB/MySQL is not reachable at {MARIADB_HOST}:{MARIADB_PORT}; its SQL source tests need it"
        )
    import pymysql

    name = f"finops_sql_source_{os.getpid()}"
    try:
        admin = pymysql.connect(
            host=MARIADB_HOST, port=MARIADB_PORT, user="root", password="", autocommit=True
        )
    except pymysql.err.OperationalError as error:
        pytest.skip(f"MariaDB at {MARIADB_HOST}:{MARIADB_PORT} refused root without a password: {error}")
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {name}")
        cursor.execute(f"CREATE DATABASE {name}")
        cursor.execute(
            f"CREATE TABLE {name}.gl_lines (id int AUTO_INCREMENT PRIMARY KEY, posted_on date, "
            "company varchar(20), gl_account varchar(20), amount decimal(18, 2))"
        )
        cursor.executemany(
            f"INSERT INTO {name}.gl_lines (posted_on, company, gl_account, amount) "  # noqa: S608 - our own name
            "VALUES (%s, %s, %s, %s)",
            LINES,
        )
    try:
        yield f"mysql://root@{MARIADB_HOST}:{MARIADB_PORT}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.close()


def test_mariadb_loads_the_query_and_twice_changes_nothing(dims, mariadb_database):
    loads_twice_without_change(sql_source(mariadb_database))


def test_mariadb_wrong_password_is_a_clear_message(dims, mariadb_database, monkeypatch):
    monkeypatch.setenv("FINOPS_SECRET_ERP_PASSWORD", "not-the-password")
    run = good_then_bad(sql_source(mariadb_database), password_env="FINOPS_SECRET_ERP_PASSWORD")
    error = run.errors[0]
    assert error["column"] == "password"
    assert "the database refused the login of user 'root'" in error["reason"]
    assert "FINOPS_SECRET_ERP_PASSWORD" in error["reason"] and "Access denied" in error["reason"]
    assert "not-the-password" not in str(run.errors)


def test_mariadb_query_past_its_timeout(dims, mariadb_database):
    run = good_then_bad(
        sql_source(mariadb_database),
        timeout_seconds=1,
        query="SELECT posted_on, company, gl_account, amount FROM gl_lines WHERE SLEEP(2) = 0",
    )
    assert "ran past its timeout of 1 s" in run.errors[0]["reason"]


# --- SQLite files -----------------------------------------------------------------------------


@pytest.fixture
def sqlite_file(folders):
    path = folders / "sources" / "erp.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE gl_lines (id integer PRIMARY KEY, posted_on text, company text, "
            "gl_account text, amount text)"
        )
        db.executemany(
            "INSERT INTO gl_lines (posted_on, company, gl_account, amount) VALUES (?, ?, ?, ?)", LINES
        )
    return path


def test_sqlite_file_loads_and_twice_changes_nothing(dims, sqlite_file):
    loads_twice_without_change(sql_source("sqlite:///erp.db"))


def test_sqlite_query_past_its_timeout_is_interrupted(dims, sqlite_file):
    slow = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000000) "
        "SELECT posted_on, company, gl_account, amount FROM gl_lines, (SELECT max(i) FROM n)"
    )
    run = good_then_bad(sql_source("sqlite:///erp.db"), timeout_seconds=1, query=slow)
    assert "ran past its timeout of 1 s" in run.errors[0]["reason"]


def test_sqlite_file_outside_the_source_folder_is_refused(dims, folders):
    with pytest.raises(ConfigInvalid) as caught:
        sql.validate_sql_config({"url": "sqlite:////etc/passwd.db", "query": QUERY, "mapping": MAPPING})
    assert "outside the source files folder" in str(caught.value)


def test_a_row_level_problem_rejects_the_whole_result(dims, sqlite_file):
    source = sql_source("sqlite:///erp.db")
    assert refresh(source_slug=source.slug).status == RefreshRun.Status.SUCCEEDED
    before = snapshot()
    with sqlite3.connect(sqlite_file) as db:
        db.execute(
            "INSERT INTO gl_lines (posted_on, company, gl_account, amount) "
            "VALUES ('2024-03-01', 'acme', '4000', 'n/a')"
        )
    run = refresh(source_slug=source.slug)
    assert run.status == RefreshRun.Status.FAILED and snapshot() == before and facts() == GOOD_FACTS
    error = run.errors[0]
    assert (error["file"], error["row"], error["column"], error["value"]) == (
        "query of erp",
        5,
        "amount",
        "n/a",
    )
    assert "not a number" in error["reason"]


def test_a_missing_column_names_the_query_columns(dims, sqlite_file):
    run = good_then_bad(
        sql_source("sqlite:///erp.db"), query="SELECT posted_on, company, amount FROM gl_lines"
    )
    assert "column 'gl_account' (mapped to account) is not in the query's result" in run.errors[0]["reason"]
    assert "posted_on, company, amount" in run.errors[0]["reason"]


def test_an_empty_result_is_refused(dims, sqlite_file):
    run = good_then_bad(sql_source("sqlite:///erp.db"), query=QUERY.replace("ORDER BY", "WHERE 0 ORDER BY"))
    assert "the query returned no rows" in run.errors[0]["reason"]


# --- the config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("DELETE FROM gl_lines", "not a SELECT (the statement is DELETE)"),
        ("SELECT 1; DROP TABLE gl_lines", "2 statements"),
        ("UPDATE gl_lines SET amount = 0", "not a SELECT"),
        ("WITH x AS (DELETE FROM gl_lines RETURNING *) SELECT * FROM x", "DELETE is not allowed"),
        ("SELECT * INTO copy FROM gl_lines", "INTO is not allowed"),
        ("SELECT * FROM gl_lines FOR UPDATE", "UPDATE is not allowed"),
        ("  ", "empty"),
    ],
)
def test_anything_but_one_select_is_refused(query, reason):
    with pytest.raises(ConfigInvalid) as caught:
        sql.validate_sql_config(
            {"url": "postgresql://reader@db.example.com/erp", "query": query, "mapping": MAPPING}
        )
    assert reason in str(caught.value)


def test_selects_and_ctes_are_accepted():
    for query in (
        "SELECT replace(company, 'x', 'y') AS company, amount FROM gl_lines WHERE amount::numeric > 0",
        "WITH j AS (SELECT * FROM gl_lines) SELECT * FROM j;",
        "-- the ledger\nSELECT * FROM gl_lines",
    ):
        assert sql.check_query(query) is None, query


def test_a_password_in_the_url_or_an_unsafe_secret_name_is_refused():
    with pytest.raises(ConfigInvalid) as caught:
        sql.validate_sql_config(
            {
                "url": "postgresql://reader:hunter2@db.example.com/erp?local_infile=1",
                "password_env": "SECRET_KEY",
                "query": QUERY,
                "mapping": MAPPING,
                "timeout_seconds": 0,
            }
        )
    problems = dict(caught.value.problems)
    assert "holds a password" in problems["url"] or "local_infile" in problems["url"]
    assert "starting with FINOPS_SECRET_" in problems["password_env"]
    assert "timeout_seconds" in problems
    fields = [name for name, _ in caught.value.problems]
    assert fields.count("url") == 2


def test_the_password_comes_from_a_secret_file_inside_the_secrets_folder(folders):
    with pytest.raises(ConfigInvalid) as caught:
        sql.validate_sql_config(
            {"url": "mysql://root@db/erp", "password_file": "/etc/shadow", "query": QUERY, "mapping": MAPPING}
        )
    assert "outside the secrets folder" in str(caught.value)
    (folders / "secrets" / "erp").write_text("s3cret\n")
    config = sql.validate_sql_config(
        {"url": "mysql://root@db/erp", "password_file": "erp", "query": QUERY, "mapping": MAPPING}
    )
    from finops.sources.remote import read_secret

    assert read_secret(config.password_env, config.password_file, what="x", column="password") == "s3cret"


def test_a_missing_password_variable_is_reported_on_the_run(dims, sqlite_file, monkeypatch):
    monkeypatch.delenv("FINOPS_SECRET_NOPE", raising=False)
    source = sql_source("postgresql://reader@db.example.com/erp", password_env="FINOPS_SECRET_NOPE")
    run = refresh(source_slug=source.slug)
    assert run.status == RefreshRun.Status.FAILED
    assert "FINOPS_SECRET_NOPE" in run.errors[0]["reason"] and "is not set" in run.errors[0]["reason"]


# --- the admin --------------------------------------------------------------------------------


def test_the_admin_preview_of_a_sql_source(dims, sqlite_file, client):
    source = sql_source("sqlite:///erp.db")
    client.force_login(factories.analyst_user())
    page = client.get(reverse("admin:finops_datasource_change", args=[source.pk])).content.decode()
    assert "Test connection / preview" in page and "sqlite:///erp.db" in page
    response = client.get(reverse("admin:finops_datasource_preview", args=[source.pk]))
    assert response.status_code == 200
    preview = response.context["preview"]
    assert preview.records == 4 and preview.ok and len(preview.rows) == 4
    assert preview.header == ["posted_on", "company", "gl_account", "amount"]
    text = response.content.decode()
    assert "SQLite file erp.db" in text and "No problems in the 4 rows checked" in text
    assert not FinancialFact.objects.exists()


def test_the_admin_preview_shows_a_connection_problem(dims, sqlite_file, client):
    source = sql_source("sqlite:///missing.db")
    client.force_login(factories.analyst_user())
    text = client.get(reverse("admin:finops_datasource_preview", args=[source.pk])).content.decode()
    assert "no such file" in text and "A refresh would reject" in text


def test_an_analyst_creates_a_sql_source_in_the_admin_form(dims, sqlite_file, client):
    client.force_login(factories.analyst_user())
    data = {
        "name": "ERP",
        "slug": "erp",
        "kind": "sql",
        "is_active": "on",
        "config": "{}",
        "sql_url": "sqlite:///erp.db",
        "sql_query": QUERY,
        "sql_timeout_seconds": "60",
        "fact_kind": "financial",
        "date_column": "posted_on",
        "date_format": "iso",
        "period_rule": "calendar_month",
        "decimal_separator": ".",
        "thousands_separator": "",
        "amount_column": "amount",
        "entity_column": "company",
        "account_column": "gl_account",
        "department_value": "sales",
        "scenario_value": "actual",
    }
    bad = client.post(reverse("admin:finops_datasource_add"), {**data, "sql_query": "DELETE FROM gl_lines"})
    assert bad.status_code == 200
    assert "not a SELECT" in bad.context["adminform"].form.errors["sql_query"][0]
    response = client.post(reverse("admin:finops_datasource_add"), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    source = DataSource.objects.get(slug="erp")
    assert source.config["url"] == "sqlite:///erp.db" and source.config["query"] == QUERY
    assert source.config["mapping"]["columns"]["account"] == "gl_account"
    assert loader_for(source)(source, report=Report()).rows_inserted == 3
