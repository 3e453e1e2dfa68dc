"""The ``http`` data source: records from a JSON API, page by page, mapped onto facts.

Config (``DataSource.config``; the admin edits it as a form, docs/data-sources.md has examples)::

    {
      "url": "https://erp.example.com/api/v2/ledger",
      "params": {"company": "NW"},          # fixed query parameters (optional)
      "auth_header": "Authorization",       # optional; its value is read at run time from
      "auth_env": "FINOPS_SECRET_ERP_TOKEN",  # an environment variable, or "auth_file": a secret file
      "auth_prefix": "Bearer ",             # put before the secret (optional)
      "records_path": "data.lines",         # where the list of records is; empty: the whole body
      "pagination": "none",                 # none | page | cursor
      "page_param": "page", "page_start": 1,              # page: stop on the first empty page
      "cursor_param": "cursor", "cursor_path": "meta.next", # cursor: stop when it is missing or empty
      "timeout_seconds": 30, "retries": 2, "backoff_seconds": 1,
      "max_pages": 1000, "max_bytes": 20000000,
      "allow_internal": false,
      "mapping": {...}                      # finops.sources.mapping; columns are dotted JSON paths
    }

Safety:

- Only ``http`` and ``https`` URLs; credentials in the URL are refused (use the auth header).
- Before each request the host is resolved and every address checked: loopback, private,
  link-local (cloud metadata at 169.254.169.254), multicast, unspecified, reserved and other
  non-global addresses are refused unless the source has ``allow_internal: true``. The
  connection is then made to the address that was checked (no second lookup to rebind), and
  redirects are never followed (a 3xx is an error naming the target: configure the final URL).
- Each response is read up to ``max_bytes`` (a larger one is refused), with ``timeout_seconds``
  for the whole response; at most ``max_pages`` pages (more is an error, never a partial load).
- Retries with exponential backoff only after a 5xx status or a failed connection; a timeout or
  a 4xx is reported at once.
- JSON numbers are read as ``Decimal`` (never a binary float); ``NaN`` and ``Infinity`` are refused.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from finops.loading import LoadResult
from finops.models import DataSource
from finops.sources import Report
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

KEYS = (
    "url",
    "params",
    "auth_header",
    "auth_env",
    "auth_file",
    "auth_prefix",
    "records_path",
    "pagination",
    "page_param",
    "page_start",
    "cursor_param",
    "cursor_path",
    "timeout_seconds",
    "retries",
    "backoff_seconds",
    "max_pages",
    "max_bytes",
    "allow_internal",
    "mapping",
)
NONE, PAGE, CURSOR = "none", "page", "cursor"
PAGINATIONS = (NONE, PAGE, CURSOR)
DEFAULT_TIMEOUT, MAX_TIMEOUT = 30, 600
DEFAULT_RETRIES, MAX_RETRIES = 2, 10
DEFAULT_MAX_PAGES, MAX_MAX_PAGES = 1000, 100_000
DEFAULT_MAX_BYTES, MAX_MAX_BYTES = 20 * 1024 * 1024, 500 * 1024 * 1024
EXCERPT = 200
CHUNK = 64 * 1024
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
PATH = re.compile(r"[^.\s]+(\.[^.\s]+)*")


@dataclass(frozen=True)
class HttpConfig:
    url: str
    mapping: MappingConfig
    params: dict[str, str] = field(default_factory=dict)
    auth_header: str = ""
    auth_env: str = ""
    auth_file: str = ""
    auth_prefix: str = ""
    records_path: str = ""
    pagination: str = NONE
    page_param: str = "page"
    page_start: int = 1
    cursor_param: str = "cursor"
    cursor_path: str = ""
    timeout_seconds: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    backoff_seconds: float = 1.0
    max_pages: int = DEFAULT_MAX_PAGES
    max_bytes: int = DEFAULT_MAX_BYTES
    allow_internal: bool = False


def _number(data, key, default, low, high, problems, *, whole=True):
    value = data.get(key, default)
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        what = "a whole number" if whole else "a number"
        problems.append((key, f"{value!r}: {what} from {low} to {high:,}"))
        return default
    return value


def _text(data, key, default, problems) -> str:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        problems.append((key, "must be text"))
        return default
    return value.strip()


def validate_http_config(data: Any) -> HttpConfig:
    """A typed HttpConfig, or ConfigInvalid listing every problem (the mapping's too)."""
    if not isinstance(data, dict):
        raise ConfigInvalid([("config", "must be an object")])
    problems: list[tuple[str, str]] = []
    for key in data:
        if key not in KEYS:
            problems.append((str(key), f"unknown setting; use {', '.join(KEYS)}"))
    url = _text(data, "url", "", problems)
    if not url:
        problems.append(("url", "required: the API's address, e.g. https://erp.example.com/api/ledger"))
    else:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            problems.append(("url", f"{parts.scheme or 'no'} scheme: use an http:// or https:// address"))
        elif not parts.hostname:
            problems.append(("url", "no host name"))
        if parts.username or parts.password:
            problems.append(("url", "holds credentials: remove them and use the auth header with a secret"))
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as error:
            problems.append(("url", str(error)))
    params = data.get("params") or {}
    if not isinstance(params, dict) or not all(
        isinstance(k, str) and isinstance(v, str | int) and not isinstance(v, bool) for k, v in params.items()
    ):
        problems.append(("params", "must be an object of parameter names to text"))
        params = {}
    params = {k: str(v) for k, v in params.items()}
    header = _text(data, "auth_header", "", problems)
    env, secret_file = check_secret(data, "auth_env", "auth_file", problems)
    if header and not HEADER_NAME.fullmatch(header):
        problems.append(("auth_header", f"{header!r} is not a header name (e.g. Authorization, X-Api-Key)"))
    if header and not (env or secret_file):
        problems.append(
            ("auth_env", "the auth header needs its value: name an environment variable or a secret file")
        )
    if (env or secret_file) and not header:
        problems.append(("auth_header", "name the header that carries the secret (e.g. Authorization)"))
    prefix = data.get("auth_prefix") or ""
    if not isinstance(prefix, str) or "\r" in prefix or "\n" in prefix:
        problems.append(("auth_prefix", "must be text on one line, e.g. 'Bearer '"))
        prefix = ""
    records_path = _text(data, "records_path", "", problems)
    if records_path and not PATH.fullmatch(records_path):
        problems.append(("records_path", f"{records_path!r}: a dotted path such as data.items, or empty"))
    pagination = data.get("pagination") or NONE
    if pagination not in PAGINATIONS:
        problems.append(("pagination", f"{pagination!r}: use none, page or cursor"))
        pagination = NONE
    page_param = _text(data, "page_param", "page", problems) or "page"
    page_start = _number(data, "page_start", 1, 0, 1_000_000, problems)
    cursor_param = _text(data, "cursor_param", "cursor", problems) or "cursor"
    cursor_path = _text(data, "cursor_path", "", problems)
    if pagination == CURSOR and not cursor_path:
        problems.append(
            ("cursor_path", "cursor pagination needs the path of the next cursor in the response")
        )
    if cursor_path and not PATH.fullmatch(cursor_path):
        problems.append(("cursor_path", f"{cursor_path!r}: a dotted path such as meta.next_cursor"))
    if pagination == PAGE and not records_path:
        pass  # a page that is a bare list is fine
    timeout = _number(data, "timeout_seconds", DEFAULT_TIMEOUT, 0.1, MAX_TIMEOUT, problems, whole=False)
    retries = _number(data, "retries", DEFAULT_RETRIES, 0, MAX_RETRIES, problems)
    backoff = _number(data, "backoff_seconds", 1.0, 0, 60, problems, whole=False)
    max_pages = _number(data, "max_pages", DEFAULT_MAX_PAGES, 1, MAX_MAX_PAGES, problems)
    max_bytes = _number(data, "max_bytes", DEFAULT_MAX_BYTES, 1024, MAX_MAX_BYTES, problems)
    allow_internal = data.get("allow_internal", False)
    if not isinstance(allow_internal, bool):
        problems.append(("allow_internal", "must be true or false"))
        allow_internal = False
    mapping = None
    try:
        mapping = validate_config(data.get("mapping"))
    except ConfigInvalid as invalid:
        problems.extend(invalid.problems)
    if mapping is not None:
        for target, path in mapping.columns.items():
            if not PATH.fullmatch(path):
                problems.append(
                    (f"mapping.columns.{target}", f"{path!r}: a dotted JSON path such as amount.net")
                )
    if problems:
        raise ConfigInvalid(problems)
    return HttpConfig(
        url=url,
        mapping=mapping,
        params=params,
        auth_header=header,
        auth_env=env,
        auth_file=secret_file,
        auth_prefix=prefix,
        records_path=records_path,
        pagination=pagination,
        page_param=page_param,
        page_start=page_start,
        cursor_param=cursor_param,
        cursor_path=cursor_path,
        timeout_seconds=timeout,
        retries=retries,
        backoff_seconds=backoff,
        max_pages=max_pages,
        max_bytes=max_bytes,
        allow_internal=allow_internal,
    )


def parse_config(source: DataSource) -> HttpConfig:
    try:
        return validate_http_config(source.config or {})
    except ConfigInvalid as invalid:
        raise config_rejected(source, invalid) from None


# --- addresses --------------------------------------------------------------------------------

_REFUSED = (
    ("is_loopback", "a loopback address"),
    ("is_link_local", "a link-local address (where cloud metadata services such as 169.254.169.254 live)"),
    ("is_multicast", "a multicast address"),
    ("is_unspecified", "an unspecified address"),
    ("is_private", "a private address"),
    ("is_reserved", "a reserved address"),
)


def internal_reason(address: str) -> str | None:
    """Why ``address`` is internal (refused without allow_internal), or None for a public one."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for attribute, reason in _REFUSED:
        if getattr(ip, attribute):
            return reason
    if not ip.is_global:
        return "not a public address"
    return None


def resolve(host: str, port: int, *, allow_internal: bool) -> str:
    """The address to connect to: every address of ``host`` checked, the first returned."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise SourceError(f"unknown host {host!r}: no address found for it ({error})", column="url") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise SourceError(f"unknown host {host!r}: no address found for it", column="url")
    if not allow_internal:
        for address in addresses:
            reason = internal_reason(address)
            if reason:
                shown = host if host == address else f"{host} ({address})"
                raise SourceError(
                    f"refused: {shown} is {reason}; a source may reach internal addresses only when it is "
                    "explicitly allowed (allow_internal)",
                    column="url",
                )
    return addresses[0]


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the address that was checked, whatever the name resolves to now."""

    def __init__(self, host, port, *, address, timeout):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self):
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host, port, *, address, timeout):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


# --- requests ---------------------------------------------------------------------------------


class _Retry(Exception):
    def __init__(self, message: str):
        self.message = message
        super().__init__(message)


def _excerpt(body: bytes) -> str:
    text = " ".join(body[: EXCERPT * 4].decode("utf-8", errors="replace").split())
    return text if len(text) <= EXCERPT else text[: EXCERPT - 3] + "..."


def _target(config: HttpConfig, params: dict[str, str]) -> tuple[urlsplit, str, str]:
    parts = urlsplit(config.url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    path = (parts.path or "/") + (f"?{urlencode(query)}" if query else "")
    shown = f"{parts.scheme}://{parts.netloc}{path}"
    return parts, path, shown


def _once(
    config: HttpConfig, parts, path: str, headers: dict[str, str], shown: str
) -> tuple[int, str, bytes]:
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = resolve(parts.hostname, port, allow_internal=config.allow_internal)
    kind = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
    connection = kind(parts.hostname, port, address=address, timeout=config.timeout_seconds)
    deadline = time.monotonic() + config.timeout_seconds
    timed_out = SourceError(
        f"no complete answer from {shown} within {config.timeout_seconds:g} s (timeout_seconds)", column="url"
    )
    try:
        try:
            connection.connect()
        except TimeoutError:
            raise _Retry(
                f"connecting to {parts.hostname}:{port} timed out after {config.timeout_seconds:g} s"
            ) from None
        except ssl.SSLError as error:
            raise SourceError(
                f"TLS failed with {parts.hostname}: {error.reason or error}", column="url"
            ) from None
        except OSError as error:
            raise _Retry(f"cannot connect to {parts.hostname}:{port}: {error.strerror or error}") from None
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            length = response.getheader("Content-Length")
            if length and length.isdigit() and int(length) > config.max_bytes:
                raise SourceError(
                    f"the response of {shown} is {int(length):,} bytes, "
                    f"more than max_bytes ({config.max_bytes:,}); "
                    "refused unread",
                    column="max_bytes",
                )
            chunks, size = [], 0
            while True:
                if time.monotonic() > deadline:
                    raise timed_out
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > config.max_bytes:
                    raise SourceError(
                        f"the response of {shown} is larger than max_bytes "
                        f"({config.max_bytes:,} bytes); refused",
                        column="max_bytes",
                    )
                chunks.append(chunk)
            if response.status >= 300 and response.status < 400:
                location = response.getheader("Location") or "(no Location header)"
                raise SourceError(
                    f"HTTP {response.status} {response.reason} from {shown}: a redirect to {location}; "
                    "redirects are "
                    "not followed (each address must be checked): configure the final URL",
                    column="url",
                )
            return response.status, response.reason, b"".join(chunks)
        except TimeoutError:
            raise timed_out from None
        except (http.client.RemoteDisconnected, ConnectionError) as error:
            raise _Retry(f"the connection to {parts.hostname}:{port} broke: {error}") from None
        except http.client.HTTPException as error:
            raise SourceError(
                f"not a valid HTTP answer from {shown}: {type(error).__name__} {error}"
            ) from None
    finally:
        connection.close()


def fetch(config: HttpConfig, params: dict[str, str], headers: dict[str, str], *, page: int) -> Any:
    """One page's JSON document, with retries on 5xx and failed connections."""
    parts, path, shown = _target(config, params)
    attempts = config.retries + 1
    where = f" (page {page})" if config.pagination != NONE else ""
    for attempt in range(1, attempts + 1):
        try:
            status, reason, body = _once(config, parts, path, headers, shown)
        except _Retry as retry:
            if attempt == attempts:
                tries = f" after {attempts} attempts" if attempts > 1 else ""
                raise SourceError(f"{retry.message}{tries}", column="url") from None
        else:
            if 500 <= status < 600 and attempt < attempts:
                pass
            elif status >= 400:
                tries = f" after {attempt} attempts" if attempt > 1 else ""
                raise SourceError(
                    f"HTTP {status} {reason} from {shown}{where}{tries}: {_excerpt(body) or '(empty body)'}",
                    column="url",
                )
            else:
                return _parse_json(body, shown + where)
        time.sleep(config.backoff_seconds * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _parse_json(body: bytes, shown: str) -> Any:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise SourceError(
            f"the response of {shown} is not UTF-8 text: "
            f"byte 0x{body[error.start]:02x} at position {error.start}",
            column="url",
        ) from None
    if not text.strip():
        raise SourceError(f"the response of {shown} is empty, not JSON", column="url")
    try:
        return json.loads(text, parse_float=Decimal, parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        around = text[max(0, error.pos - 20) : error.pos + 20].replace("\n", " ")
        raise SourceError(
            f"malformed JSON in the response of {shown}: {error.msg} at line {error.lineno}, column "
            f"{error.colno} (character {error.pos}), near {around!r}",
            column="url",
        ) from None
    except ValueError as error:
        raise SourceError(f"malformed JSON in the response of {shown}: {error}", column="url") from None


_MISSING = object()


def get_path(document: Any, path: str) -> Any:
    """The value at a dotted path (``data.items``, ``lines.0.amount``), or _MISSING."""
    value = document
    if not path:
        return value
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "true/false", type(None): "null"}.get(
        type(value), "a number"
    )


def records_of(document: Any, config: HttpConfig, shown: str) -> list:
    found = get_path(document, config.records_path)
    if found is _MISSING:
        keys = ", ".join(list(document)[:20]) if isinstance(document, dict) else f"it is {_kind(document)}"
        listed = f"its top-level keys are: {keys}" if isinstance(document, dict) else keys
        raise SourceError(
            f"the records path {config.records_path!r} is missing from the response of {shown} ({listed})",
            column="records_path",
        )
    if not isinstance(found, list):
        where = f"at {config.records_path!r}" if config.records_path else "the response"
        raise SourceError(
            f"{where} of {shown} is {_kind(found)}, not a list of records; set the records path",
            column="records_path",
        )
    return found


def describe(config: HttpConfig) -> str:
    parts = [f"GET {config.url}"]
    if config.params:
        parts.append("parameters " + ", ".join(f"{k}={v}" for k, v in config.params.items()))
    if config.pagination == PAGE:
        parts.append(f"pages by ?{config.page_param}= from {config.page_start} until an empty page")
    elif config.pagination == CURSOR:
        parts.append(f"cursor from {config.cursor_path!r} sent as ?{config.cursor_param}=")
    parts.append(f"records at {config.records_path!r}" if config.records_path else "records: the whole body")
    if config.auth_header:
        secret = f"${config.auth_env}" if config.auth_env else f"the secret file {config.auth_file}"
        parts.append(f"header {config.auth_header} from {secret}")
    parts.append(f"timeout {config.timeout_seconds:g} s, {config.retries} retries")
    if config.allow_internal:
        parts.append("internal addresses allowed")
    return " · ".join(parts)


@contextmanager
def open_api(source: DataSource, config: HttpConfig) -> Iterator[Stream]:
    """The API's records, page by page, each flattened to {JSON path: value} for the mapper."""
    headers = {"Accept": "application/json", "User-Agent": "FinOps-Review data source"}
    if config.auth_header:
        secret = read_secret(config.auth_env, config.auth_file, what="auth header's value", column="auth_env")
        value = f"{config.auth_prefix}{secret}"
        if "\r" in value or "\n" in value:
            raise SourceError("the auth secret holds a line break; refused", column="auth_env")
        headers[config.auth_header] = value
    paths = list(config.mapping.columns.values())
    name = urlsplit(config.url)._replace(query="", fragment="").geturl()

    def flat(record: dict) -> dict:
        values = {}
        for path in paths:
            value = get_path(record, path)
            if value is not _MISSING:
                values[path] = "" if value is None else value
        return values

    def records() -> Iterator[tuple[int, Any]]:
        number, pages = 0, 0
        page, cursor, seen = config.page_start, None, set()
        while True:
            if pages >= config.max_pages:
                raise SourceError(
                    f"the API has more than {config.max_pages:,} pages (max_pages); "
                    "nothing was loaded rather "
                    "than a part: raise max_pages",
                    column="max_pages",
                )
            params = dict(config.params)
            if config.pagination == PAGE:
                params[config.page_param] = str(page)
            elif config.pagination == CURSOR and cursor is not None:
                params[config.cursor_param] = cursor
            pages += 1
            document = fetch(config, params, headers, page=pages)
            shown = _target(config, params)[2]
            items = records_of(document, config, shown)
            for item in items:
                number += 1
                if not isinstance(item, dict):
                    raise SourceError(
                        f"record {number} (page {pages}) is {_kind(item)}, not an object with fields",
                        column="records_path",
                    )
                yield number, flat(item)
            if config.pagination == NONE:
                return
            if config.pagination == PAGE:
                if not items:
                    return
                page += 1
                continue
            following = get_path(document, config.cursor_path)
            if following is _MISSING or following in (None, "", False):
                return
            following = str(following)
            if following in seen:
                raise SourceError(
                    f"the API sent the cursor {following!r} twice (page {pages}); stopped to avoid a loop",
                    column="cursor_path",
                )
            seen.add(following)
            cursor = following

    yield Stream(
        name=name,
        origin=describe(config),
        header=None,
        records=records(),
        where="the records",
        empty="the API returned no records; nothing to load",
    )


# --- the loader and the preview --------------------------------------------------------------


def load(source: DataSource, *, report: Report, pulled: Pulled | None = None) -> LoadResult:
    """Fetch every page and load the records, all or nothing (live, or from the records pulled ahead)."""
    return load_source(source, parse_config, open_api, report=report, pulled=pulled)


def pull(source: DataSource, stop: threading.Event | None = None) -> Pulled:
    """Read every record into a spool, ahead of the load (in a pull thread; see finops.sources.pull)."""
    return pull_records(source, parse_config, open_api, stop)


def preview(source: DataSource, **limits):
    """What "Test connection / preview" shows for an HTTP source (nothing is written)."""
    return preview_source(source, parse_config, open_api, origin=describe, **limits)
