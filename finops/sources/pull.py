"""Pulling remote sources ahead of their load, several at once.

A refresh loads its sources one after the other, inside one transaction (that is what makes
publication atomic), and a SQL or HTTP source spends most of its time waiting for the other
system. So when a refresh has more than one source, it first starts a pull of every source
whose loader can pull (``pull(source)`` beside its ``load``) on a small pool of threads
(``FINOPS_PULL_THREADS``, default 4; 0 pulls each source only when it is loaded). Each pull
reads the source's records to the end into a spool (``Pulled``): in memory up to 4 MB, then a
temporary file, so memory stays bounded per source whatever its size (the disk holds every
pulled source until its load); the load of that source then maps and validates the spooled
records exactly as it would the live ones. While one source loads, the others keep pulling.
A record the spool can't hold makes its source load live.

A pull thread never touches the app's database: it reads the source's config (already loaded),
its secret and the other system. Whatever a pull raises (a refused connection, a query past its
timeout, malformed JSON on page 3) is raised again by that source's load, after the records read
before it, so a pulled source fails with the same message as a live one.
"""

from __future__ import annotations

import pickle  # noqa: S403 - the spool is our own temporary file, written by this module
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
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
    live: str = ""  # why the spool could not hold the records: the source loads live

    @contextmanager
    def open(self, source: DataSource, config: Any) -> Iterator[Stream]:
        """An opener (see ``finops.sources.remote.Opener``) that replays the spooled records."""
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


class Stopped(Exception):
    """The refresh that started a pull has ended: the pull stops at its next batch."""


def pull_records(
    source: DataSource,
    parse: Callable[[DataSource], Any],
    opener: Opener,
    stop: threading.Event | None = None,
) -> Pulled:
    """Read every record of ``source`` into a spool; never raises: an error is kept, after the
    records read before it, for the load to raise. ``stop`` ends the pull at its next batch."""
    pulled = Pulled()
    started = time.monotonic()
    batch: list[tuple[int, Any]] = []

    def spill() -> bool:
        """Write the batch to the spool; False when pickle refuses a record (a driver's own
        type, such as a memoryview of a binary column): the source then loads live."""
        nonlocal batch
        if batch and pulled.spool is not None:
            try:
                pickle.dump(batch, pulled.spool, protocol=pickle.HIGHEST_PROTOCOL)
            except (TypeError, AttributeError, pickle.PicklingError) as error:
                pulled.live = f"{type(error).__name__}: {error}"
                pulled.close()
            else:
                pulled.records += len(batch)
        batch = []
        return not pulled.live

    try:
        pulled.config = parse(source)
        with opener(source, pulled.config) as stream:
            pulled.stream = Stream(stream.name, stream.origin, stream.header, (), stream.where, stream.empty)
            pulled.spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 - the load closes it
            for number, record in stream.records:
                batch.append((number, record if isinstance(record, dict) else tuple(record)))
                if len(batch) >= SPOOL_BATCH:
                    if not spill():
                        break
                    if stop is not None and stop.is_set():
                        raise Stopped("the refresh ended before this source's pull")
            else:
                spill()
    except Exception as error:  # noqa: BLE001 - raised again by the source's load
        spill()  # the records read before the error are replayed before it
        pulled.error = error
    pulled.seconds = time.monotonic() - started
    return pulled


@dataclass
class Pulls:
    """The pulls a refresh started, each on a daemon thread (at most ``FINOPS_PULL_THREADS``
    at a time): ``take(source)`` waits for a source's pull (None when the source is not pulled
    ahead and loads live); ``close()`` stops the pulls no load took. A daemon thread never holds
    up the end of a process, even while a query or a request is waiting for its own timeout."""

    futures: dict[int, Future] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def start(cls, sources: list[DataSource]) -> Pulls:
        threads = settings.FINOPS_PULL_THREADS
        pullers = {source.pk: _puller(source) for source in sources}
        pulled = [source for source in sources if pullers[source.pk] is not None]
        if threads < 1 or len(sources) < 2 or not pulled:
            return cls()
        pulls = cls()
        slots = threading.BoundedSemaphore(threads)
        for source in pulled:
            future: Future = Future()
            pulls.futures[source.pk] = future
            thread = threading.Thread(
                target=_run,
                args=(pullers[source.pk], source, future, slots, pulls.stop),
                name=f"finops-pull-{source.slug}",
                daemon=True,
            )
            thread.start()
        return pulls

    def take(self, source: DataSource) -> Pulled | None:
        future = self.futures.get(source.pk)
        if future is None:
            return None
        pulled = future.result()  # if this wait is interrupted, close() still has the pull
        del self.futures[source.pk]
        return pulled

    def close(self) -> None:
        """Stop and drop the pulls no load took (the refresh failed first): a pull waiting for
        a slot never starts, a running one stops at its next batch (or ends at its own timeout
        while it waits for the other system), and every spool is closed when its pull ends."""
        self.stop.set()
        for future in self.futures.values():
            future.add_done_callback(_close_spool)
        self.futures.clear()


def _puller(source: DataSource) -> Callable[..., Pulled] | None:
    try:
        return getattr(loader_module(source), "pull", None)
    except ValueError:  # no loader for its kind: its load says so, in its own step
        return None


def _run(puller, source: DataSource, future: Future, slots: threading.BoundedSemaphore, stop) -> None:
    with slots:
        if stop.is_set() or not future.set_running_or_notify_cancel():
            future.cancel()
            return
        future.set_result(puller(source, stop))


def _close_spool(future: Future) -> None:
    if not future.cancelled():
        future.result().close()
