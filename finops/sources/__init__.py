"""Connectors: each data source kind has a loader that reads its input, validates every row,
and writes facts through ``finops.loading`` (inside the refresh's transaction)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

from finops.loading import LoadResult
from finops.models import DataSource


@dataclass
class Report:
    """What a loader noticed: warnings are shown on the run; they never stop a load."""

    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        self.warnings.append(message)


# load(source: DataSource, *, report: Report, pulled: Pulled | None = None) -> LoadResult; the
# pulled records are given only to a loader whose module has ``pull`` (finops.sources.pull).
Loader = Callable[..., LoadResult]

LOADERS: dict[str, str] = {
    DataSource.Kind.FILE: "finops.sources.files",
    DataSource.Kind.SQL: "finops.sources.sql",
    DataSource.Kind.HTTP: "finops.sources.http",
    DataSource.Kind.DEMO: "finops.sources.demo",
    DataSource.Kind.ADVENTUREWORKS: "finops.sources.adventureworks",
}


def loader_module(source: DataSource) -> ModuleType:
    """The module of the source's kind: its ``load``, and ``pull`` for a source whose records
    can be pulled ahead of the load (``finops.sources.pull``)."""
    try:
        module = LOADERS[source.kind]
    except KeyError:
        raise ValueError(f"No loader for data sources of kind {source.kind!r}") from None
    return importlib.import_module(module)


def loader_for(source: DataSource) -> Loader:
    return loader_module(source).load
