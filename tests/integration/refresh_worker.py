"""A Celery worker for the robustness tests: the real worker, with the data source kind
``file`` read by ``tests.finops.slow_source`` (a loader that can be held mid-load).

Run as ``python tests/integration/refresh_worker.py <celery worker options>`` from the
project root; the pool's processes are forked after the switch, so they all use it.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "finops.settings")

import django  # noqa: E402

django.setup()

from finops import sources  # noqa: E402
from finops.celery import app  # noqa: E402
from finops.models import DataSource  # noqa: E402

sources.LOADERS[DataSource.Kind.FILE] = "tests.finops.slow_source"

if __name__ == "__main__":
    app.worker_main(["worker", *sys.argv[1:]])
