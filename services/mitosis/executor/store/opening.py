"""Choose the store from configuration: `--store sqlite:PATH` (the default) or `--store redis://…`."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from mitosis.executor.store.base import Store
from mitosis.executor.store.sqlite import SqliteStore

DEFAULT_SQLITE_NAME = "mitosis.sqlite3"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_REDIS_SCHEMES = ("redis", "rediss", "unix")


def open_store(spec: str, data_dir: Path, *, retain: float = 0) -> Store:
    """Open the store that `spec` names.

    - empty, `sqlite` or `sqlite:`: SQLite at `data_dir/mitosis.sqlite3` (the default);
    - `sqlite:PATH` or `sqlite://PATH`, or a bare PATH: SQLite at PATH (relative paths are
      relative to the working directory, like any other path on the command line);
    - `redis://[user:password@]host:port/db`, `rediss://…` (TLS) or `unix:///path/redis.sock`:
      Redis. The query may carry `prefix=…` (default `mitosis:`) so that several
      deployments can share one database; the other query options are redis-py's.

    `retain` (seconds, 0 for never) is how long a task is kept after it ended, for a store
    that expires tasks on its own (Redis); the retention sweep deletes them on any store.
    Opening does not connect: a Redis store connects on its first call.
    """
    spec = spec.strip()
    found = _SCHEME.match(spec)
    scheme = found.group(1).lower() if found else ""
    if scheme in _REDIS_SCHEMES:
        return _open_redis(spec, retain)
    if spec.lower() == "sqlite":
        return SqliteStore(data_dir / DEFAULT_SQLITE_NAME)
    if not scheme:
        return SqliteStore(Path(spec).expanduser() if spec else data_dir / DEFAULT_SQLITE_NAME)
    if scheme == "sqlite":
        path = spec[len("sqlite:") :]
        if path.startswith("//"):
            path = path[2:]
        return SqliteStore(Path(path).expanduser() if path else data_dir / DEFAULT_SQLITE_NAME)
    raise ValueError(
        f"unknown store {spec!r}: use sqlite:PATH, a path, redis://host:port/db or rediss://…"
    )


def _open_redis(spec: str, retain: float) -> Store:
    # Imported here so that a SQLite-only installation does not need redis-py.
    from mitosis.executor.store.redis import DEFAULT_PREFIX, RedisStore

    parts = urlsplit(spec)
    if parts.scheme.lower() != "unix" and not parts.hostname:
        raise ValueError(f"store {spec!r} names no Redis host")
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [value for key, value in query if key == "prefix"]
    rest = [(key, value) for key, value in query if key != "prefix"]
    url = urlunsplit(parts._replace(query=urlencode(rest)))
    prefix = prefixes[-1] if prefixes else DEFAULT_PREFIX
    return RedisStore.from_url(url, prefix=prefix, retain=retain)
