"""Print environment settings for the services reachable on this machine (used by `make test`).

Prints `DATABASE_URL=...` and `REDIS_URL=...` lines for PostgreSQL and Redis when a TCP
connection succeeds and the variable is not already set; prints nothing otherwise, so the
suite falls back to SQLite and in-process tasks and skips what needs the real services.
"""

from __future__ import annotations

import os
import socket

SERVICES = {
    "DATABASE_URL": ("127.0.0.1", 5432, "postgres://postgres@127.0.0.1:5432/finops"),
    "REDIS_URL": ("127.0.0.1", 6379, "redis://127.0.0.1:6379/0"),
}


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def main() -> None:
    for name, (host, port, url) in SERVICES.items():
        if os.environ.get(name):
            print(f"{name}={os.environ[name]}")
        elif reachable(host, port):
            print(f"{name}={url}")


if __name__ == "__main__":
    main()
