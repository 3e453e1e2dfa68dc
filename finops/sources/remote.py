"""What the SQL and HTTP sources share: secrets read at run time, and the read-map-load loop.

Both sources hand records to the mapping layer (``finops.sources.mapping``) exactly as the file
source does: every record is checked before anything is written, and the load is all or nothing.

Secrets (a database password, an API token) are never stored in the database. A source's config
names where the secret is read when the source runs:

- an environment variable whose name starts with ``FINOPS_SECRET_`` (the prefix keeps a source
  from sending the app's own ``SECRET_KEY`` or ``DATABASE_URL`` to a server of its choosing), or
- a file inside the secrets folder ``FINOPS_SOURCE_SECRETS_DIR`` (default ``/run/secrets``, where
  Docker and Kubernetes mount secrets); its content, without the final newline, is the secret.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings

from finops.errors import ImportRejected, RowError
from finops.loading import LoadResult
from finops.models import DataSource
from finops.sources import Report
from finops.sources.files import PREVIEW_CHECK_ROWS, PREVIEW_ROWS, Input, PeriodLine, Preview, path_inside
from finops.sources.mapping import ConfigInvalid, Lookups, MappedRow, RowMapper, load_mapped

SECRET_ENV_PREFIX = "FINOPS_SECRET_"  # noqa: S105 - a name prefix, not a secret
DEFAULT_SECRETS_DIR = "/run/secrets"
MAX_SECRET_BYTES = 64 * 1024
if TYPE_CHECKING:
    from finops.sources.pull import Pulled

_ENV_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


class SourceError(Exception):
    """The source cannot be read: ``message`` says why (and never holds a secret)."""

    def __init__(self, message: str, *, column: str | None = None):
        self.message, self.column = message, column
        super().__init__(message)


def secrets_dir() -> Path:
    configured = getattr(settings, "FINOPS_SOURCE_SECRETS_DIR", None) or os.environ.get(
        "FINOPS_SOURCE_SECRETS_DIR", DEFAULT_SECRETS_DIR
    )
    return Path(configured).resolve()


def check_secret(data: dict, env_key: str, file_key: str, problems: list[tuple[str, str]]) -> tuple[str, str]:
    """Validate where a secret comes from: (environment variable name, secret file), either empty."""
    env, path = data.get(env_key) or "", data.get(file_key) or ""
    if not isinstance(env, str):
        problems.append((env_key, "must be text: the name of an environment variable"))
        env = ""
    env = env.strip()
    if env and (
        not _ENV_NAME.fullmatch(env) or not env.startswith(SECRET_ENV_PREFIX) or env == SECRET_ENV_PREFIX
    ):
        problems.append(
            (
                env_key,
                f"{env!r}: name an environment variable starting with {SECRET_ENV_PREFIX} "
                f"(capitals, digits and _), e.g. {SECRET_ENV_PREFIX}ERP_PASSWORD",
            )
        )
    if not isinstance(path, str):
        problems.append((file_key, "must be text: a file in the secrets folder"))
        path = ""
    path = path.strip()
    if path:
        try:
            secret_path(path)
        except ValueError as error:
            problems.append((file_key, str(error)))
    if env and path:
        problems.append((file_key, f"give either {env_key} or {file_key}, not both"))
    return env, path


def secret_path(path: str) -> Path:
    return path_inside(secrets_dir(), path, "the secrets folder", "FINOPS_SOURCE_SECRETS_DIR")


def read_secret(env: str, path: str, *, what: str, column: str) -> str | None:
    """The secret, read now; None when the config names none; SourceError when it is missing."""
    if env:
        value = os.environ.get(env)
        if value is None:
            raise SourceError(
                f"the environment variable {env} (which holds the {what}) is not set for the refresh",
                column=column,
            )
        return value
    if path:
        try:
            resolved = secret_path(path)
            with open(resolved, "rb") as handle:
                data = handle.read(MAX_SECRET_BYTES + 1)
        except ValueError as error:
            raise SourceError(str(error), column=column) from None
        except OSError as error:
            raise SourceError(
                f"the secret file {path} (which holds the {what}) cannot be read: {error.strerror or error}",
                column=column,
            ) from None
        if len(data) > MAX_SECRET_BYTES:
            raise SourceError(f"the secret file {path} is larger than 64 KB; refused", column=column)
        return data.decode("utf-8", errors="strict").rstrip("\r\n")
    return None


def config_rejected(source: DataSource, invalid: ConfigInvalid) -> ImportRejected:
    where = f"data source {source.slug} (config)"
    return ImportRejected([RowError(where, None, name, None, message) for name, message in invalid.problems])


# --- reading records into the mapper ---------------------------------------------------------


@dataclass
class Stream:
    """Records read from a source: ``header`` names the cells of sequence records (None when the
    records are dicts); ``records`` yields (number, record)."""

    name: str  # shown as the "file" of each problem
    origin: str  # a sentence for the preview: where the records come from
    header: list[str] | None
    records: Iterable[tuple[int, Any]]
    where: str  # what holds the columns, for "column X is not in ..."
    empty: str  # the reason when there is no record


Opener = Callable[[DataSource, Any], AbstractContextManager[Stream]]


def read_mapped(
    source: DataSource, config: Any, opener: Opener, *, keep: int = 0, max_rows: int | None = None
) -> tuple[Stream, RowMapper, list[MappedRow], bool]:
    """Map every record the opener yields: (stream, mapper, the first ``keep`` rows, read to the
    end?). SourceError (connection, query, response) becomes ImportRejected."""
    kept: list[MappedRow] = []
    complete = True
    name = source.slug
    try:
        with opener(source, config) as stream:
            name = stream.name
            mapper = RowMapper(config.mapping, Lookups.from_db(), file=stream.name)
            if mapper.bind(stream.header, where=stream.where):
                for number, record in stream.records:
                    if max_rows is not None and mapper.records >= max_rows:
                        complete = False
                        break
                    row = mapper.map(number, record)
                    if len(kept) < keep:
                        kept.append(row)
                if complete:
                    mapper.finish()
                if mapper.records == 0 and not mapper.problems:
                    mapper.problems.add(None, None, None, stream.empty)
    except SourceError as error:
        raise ImportRejected([RowError(name, None, error.column, None, error.message)]) from None
    return stream, mapper, kept, complete


def load_source(
    source: DataSource,
    parse: Callable[[DataSource], Any],
    opener: Opener,
    *,
    report: Report,
    pulled: Pulled | None = None,
) -> LoadResult:
    """Read, validate and load, all or nothing (as the file source does): live, or from the
    records ``pulled`` ahead of the load (which raises what the pull met, where it met it)."""
    if pulled is not None and pulled.live:  # the spool could not hold the records
        pulled = None
    if pulled is None:
        config = parse(source)
    else:
        config, opener = pulled.config, pulled.open
    try:
        _stream, mapper, _kept, _complete = read_mapped(source, config, opener)
    finally:
        if pulled is not None:
            pulled.close()
    return load_mapped(source, mapper, report=report)


def preview_source(
    source: DataSource,
    parse: Callable[[DataSource], Any],
    opener: Opener,
    *,
    origin: Callable[[Any], str],
    rows: int = PREVIEW_ROWS,
    max_rows: int = PREVIEW_CHECK_ROWS,
) -> Preview:
    """The first ``rows`` records as they would be loaded and the problems of the first
    ``max_rows``, without writing anything (the file source's ``Preview``)."""
    from django.utils import timezone

    result = Preview(source=source, check_limit=max_rows, checked_at=timezone.now())
    try:
        result.config = parse(source)
        result.input = Input(name=source.slug, size=0, origin=origin(result.config))
        stream, mapper, kept, complete = read_mapped(
            source, result.config, opener, keep=rows, max_rows=max_rows
        )
    except ImportRejected as rejected:
        result.problems = rejected.errors
        result.problem_total = len(rejected.errors)
        return result
    result.input = Input(name=stream.name, size=0, origin=stream.origin)
    result.header = list(stream.header or [])
    result.rows, result.records, result.complete = kept, mapper.records, complete
    result.problems = mapper.problems.as_errors()
    result.problem_total, result.problem_rows = mapper.problems.total, mapper.problems.rows
    result.keys = mapper.keys
    result.periods = [
        PeriodLine(scenario, period, line.rows, line.total)
        for (scenario, period), line in sorted(mapper.summary.items(), key=lambda item: item[0])
    ]
    return result


def numbered(records: Iterable[Any], start: int = 1) -> Iterator[tuple[int, Any]]:
    yield from enumerate(records, start=start)
