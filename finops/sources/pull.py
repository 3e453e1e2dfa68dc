"""Pulling remote sources ahead of their load, several at once.

A refresh loads its sources one after the other, inside one transaction (that is what makes
publication atomic), and a SQL or HTTP source spends most of its time waiting for the other
system. So when a refresh has more than one source, it first starts a pull of every source
whose loader can pull (``pull(source)`` beside its ``load``) on a small pool of threads
(``FINOPS_PULL_THREADS``, default 4; 0 pulls each source only when it is loaded). Each pull
reads the source's records to the end into a spool file on disk (``Pulled``), so memory stays
bounded whatever the size; the load of that source then maps and validates the spooled
records exactly as it would the live ones. While one source loads, the others keep pulling.

A pull thread never touches the app's database: it reads the source's config (already loaded),
its secret and the other system. Whatever a pull raises (a refused connection, a query past its
timeout, malformed JSON on page 3) is raised again by that source's load, after the records read
before it, so a pulled source fails with the same message as a live one.
"""

from __future__ import annotations

import pickle  # noqa: S403 - the spool is our own temporary file, written by this module
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from django.conf import settings

from finops.models import DataSource
from finops.sources import loader_module
from finops.sources.remote import Opener, Stream

SPOOL_BATCH = 2000  # records per pickled batch
SPOOL_IN_MEMORY = 4 * 1024 * 1024  # a spool moves to disk past this many bytes


@dataclass
class Pulled:
    """One source's records, read to the end (or to the error that stopped the read)."""

    config: Any = None
    stream: Stream | None = None  # the stream's description; its records are in ``spool``
    spool: IO[bytes] | None = None
    records: int = 0
    error: BaseException | None = None
    seconds: float = 0.0

    def open(self, source: DataSource, config: Any) -> AbstractContextManager[Stream]:
        """An opener (see ``finops.sources.remote.Opener``) that replays the spooled records."""
        return self._replay()

    @contextmanager
    def _replay(self) -> Iterator[Stream]:
        if self.stream is None:  # the pull failed before the first record
            raise self.error if self.error is not None else RuntimeError("the pull did not run")
        yield Stream(
            name=self.stream.name,
            origin=self.stream.origin,
            header=self.stream.header,
            records=self._records(),
            where=self.stream.where,
            empty=self.stream.empty,
        )

    def _records(self) -> Iterator[tuple[int, Any]]:
        if self.spool is not None:
            self.spool.seek(0)
            while True:
                try:
                    batch = pickle.load(self.spool)  # noqa: S301 - written by pull_records
                except EOFError:
                    break
                yield from batch
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None


def pull_records(source: DataSource, parse: Callable[[DataSource], Any], opener: Opener) -> Pulled:
    """Read every record of ``source`` into a spool; never raises (the error is kept)."""
    pulled = Pulled()
    started = time.monotonic()
    try:
        pulled.config = parse(source)
        with opener(source, pulled.config) as stream:
            pulled.stream = Stream(stream.name, stream.origin, stream.header, (), stream.where, stream.empty)
            pulled.spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 - the load closes it
            batch: list[tuple[int, Any]] = []
            for number, record in stream.records:
                batch.append((number, record if isinstance(record, dict) else tuple(record)))
                if len(batch) >= SPOOL_BATCH:
                    pickle.dump(batch, pulled.spool, protocol=pickle.HIGHEST_PROTOCOL)
                    pulled.records += len(batch)
                    batch = []
            if batch:
                pickle.dump(batch, pulled.spool, protocol=pickle.HIGHEST_PROTOCOL)
                pulled.records += len(batch)
    except Exception as error:  # noqa: BLE001 - raised again by the source's load
        pulled.error = error
    pulled.seconds = time.monotonic() - started
    return pulled


@dataclass
class Pulls:
    """The pulls a refresh started: ``take(source)`` waits for a source's pull (None when the
    source is not pulled ahead and loads live)."""

    futures: dict[int, Future] = field(default_factory=dict)
    pool: ThreadPoolExecutor | None = None

    @classmethod
    def start(cls, sources: list[DataSource]) -> Pulls:
        threads = settings.FINOPS_PULL_THREADS
        pullers = {source.pk: getattr(loader_module(source), "pull", None) for source in sources}
        pulled = [source for source in sources if pullers[source.pk] is not None]
        if threads < 1 or len(sources) < 2 or not pulled:
            return cls()
        pool = ThreadPoolExecutor(max_workers=min(threads, len(pulled)), thread_name_prefix="finops-pull")
        return cls({source.pk: pool.submit(pullers[source.pk], source) for source in pulled}, pool)

    def take(self, source: DataSource) -> Pulled | None:
        future = self.futures.pop(source.pk, None)
        return None if future is None else future.result()

    def close(self) -> None:
        """Drop the pulls no load took (the refresh failed first); a pull still running ends
        at its own timeout, in the background."""
        if self.pool is None:
            return
        for future in self.futures.values():
            if not future.cancel():  # running or done: its spool goes when it is done
                future.add_done_callback(lambda done: done.result().close())
        self.pool.shutdown(wait=False, cancel_futures=True)
