"""A loader for the robustness tests: it writes its facts, then waits while a file exists.

Configured through ``DataSource.config``:

- ``rows``: ``[[day, amount], ...]`` booked on ``codes`` (entity, department, scenario and
  account codes, defaulting to the factories' dimensions);
- ``attempts_file``: each attempt appends its process id once its facts are written (inside
  the refresh's uncommitted transaction), so a test knows which process to kill and when;
- ``hold_file``: while it exists the load waits (at most ``hold_seconds``, default 60), keeping
  the refresh running with its work uncommitted.

The integration tests register it in their worker (``tests/integration/refresh_worker.py``);
unit tests point a kind at it with ``monkeypatch.setitem(sources.LOADERS, ...)``.
"""

from __future__ import annotations

import os
import time
from datetime import date
from decimal import Decimal
from pathlib import Path

from finops.loading import load_financial_facts
from finops.models import Account, Department, Entity, Scenario

DEFAULT_CODES = {"entity": "acme", "department": "sales", "scenario": "actual", "account": "4000"}


def load(source, *, report):
    config = source.config
    codes = {**DEFAULT_CODES, **config.get("codes", {})}
    ids = (
        Entity.objects.get(code=codes["entity"]).pk,
        Department.objects.get(code=codes["department"]).pk,
        Scenario.objects.get(code=codes["scenario"]).pk,
        Account.objects.get(code=codes["account"]).pk,
    )
    rows = [(date.fromisoformat(day), *ids, Decimal(amount)) for day, amount in config["rows"]]
    result = load_financial_facts(source=source, rows=rows)
    if config.get("attempts_file"):
        with Path(config["attempts_file"]).open("a") as attempts:
            attempts.write(f"{os.getpid()}\n")
    if config.get("hold_file"):
        deadline = time.monotonic() + config.get("hold_seconds", 60)
        while Path(config["hold_file"]).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return result
