"""Where a running refresh has got to, visible while it runs.

A refresh loads and recomputes inside one transaction, so nothing it writes to the database
can be seen before it commits (that is what keeps pages on the last complete data). Its
progress goes to the cache instead: Redis in production, shared by the worker that runs the
refresh and the web processes that show it; the process's own memory where tasks run in the
web process (no Redis). The Data page polls it every few seconds while a run is running.

Progress is informative only: if the cache is down, the refresh goes on without it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from django.core.cache import cache

log = logging.getLogger(__name__)

TTL = 24 * 3600  # longer than any refresh's time limit


@dataclass(frozen=True)
class Progress:
    stage: str  # what the run is doing now, in words
    done: int  # steps finished: one per source, then the recompute
    total: int

    @property
    def step(self) -> int:  # the step under way, counted from 1
        return min(self.done + 1, self.total)

    @property
    def percent(self) -> int:
        return round(100 * self.done / self.total) if self.total else 0


def _key(run_id: int) -> str:
    return f"finops:refresh-progress:{run_id}"


def publish(run_id: int, *, stage: str, done: int, total: int) -> None:
    try:
        cache.set(_key(run_id), asdict(Progress(stage, done, total)), TTL)
    except Exception:  # noqa: BLE001 - progress must never stop a refresh
        log.warning("refresh run %s: could not publish its progress", run_id, exc_info=True)


def read(run_id: int) -> Progress | None:
    try:
        found = cache.get(_key(run_id))
    except Exception:  # noqa: BLE001 - no progress to show, the page says the run is running
        log.warning("refresh run %s: could not read its progress", run_id, exc_info=True)
        return None
    return Progress(**found) if found else None


def clear(run_id: int) -> None:
    try:
        cache.delete(_key(run_id))
    except Exception:  # noqa: BLE001
        log.warning("refresh run %s: could not clear its progress", run_id, exc_info=True)
