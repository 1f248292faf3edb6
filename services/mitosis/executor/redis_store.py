"""The scale-out store: Redis, shared by several executors.

Key layout, under a prefix (default ``mitosis:``) so that several deployments can share one
Redis database:

``{prefix}task:{task_id}``   string: the `Task` record (protobuf bytes), the fold of its events
``{prefix}events:{task_id}`` stream: one entry per event, entry id ``<seq>-0``, one field
                             ``e`` holding the `TaskEvent` (protobuf bytes)
``{prefix}tasks``            sorted set of every task, for the newest-first listing
``{prefix}unfinished``       sorted set of the tasks that have not reached a terminal state
``{prefix}tasks-of:{owner}`` the same two, for the tasks of one owner (`Task.owner`)
``{prefix}unfinished-of:{owner}``
``{prefix}ended``            sorted set of the ended tasks, by the time their terminal event
                             was appended: ``<end time in ns, 20 digits>:<task_id>``
``{prefix}ended-info``       hash: task id -> ``<end ns>:<create ns>:<owner>``, what deleting
                             the task needs after its record expired

The sorted sets give every member the score 0 and order by the member itself:
``<create time in ns, 20 digits, zero-padded>:<task_id>``. Lexicographic order on that
string is exactly the order on ``(create_ns, task_id)`` that SQLite uses, with no loss: a
score is a double, which cannot hold a nanosecond timestamp (2**53 ns is only 104 days).

Stream entry ids are ``<seq>-0``. XADD refuses an id that is not greater than the newest
entry's, so the stream itself rejects a duplicate or an out-of-order `seq`; ``XRANGE key
<seq> +`` reads from a seq on (an incomplete id means ``<seq>-0``), and the stream's
last-generated-id reads as the newest seq. (``<seq>-1`` would add nothing: ``1-0`` is
already greater than the ``0-0`` that XADD forbids.)

Appends are optimistic transactions: WATCH the record and the stream, read both, fold the
events in Python with `stamp_events`, then MULTI/EXEC the XADDs, the new record and the
unfinished set together. A concurrent writer makes EXEC fail and the append starts over.
The keys of one task and the sorted sets live in different hash slots: this is for a
single Redis primary (with replicas or Sentinel), not Redis Cluster.

Retention: with `retain`, the transaction that appends a task's terminal event also gives
its record and its stream an expiry (PEXPIREAT), so Redis deletes them on its own even if no
executor is left to sweep; `delete_ended` (the retention sweep) deletes them on time and
removes the index entries, which do not expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self, cast
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mitosis.errors import Unavailable
from mitosis.executor.store import LeaseLost, TaskPage
from mitosis.projection import TERMINAL_STATES, stamp_events
from mitosis.v1 import task_pb2

DEFAULT_PREFIX = "mitosis:"

_FIELD = b"e"
_NS_PER_MS = 1_000_000
_STREAM_OUTLIVES_RECORD_MS = 60_000
"""The stream expires a minute after the record: a task is never visible without its log."""
_NS_DIGITS = 20
_NS_LIMIT = 10**_NS_DIGITS


class StoreUnavailable(Unavailable):
    """Redis could not be reached, even after the bounded retries."""


class AppendContention(RuntimeError):
    """An append lost the optimistic-concurrency race too many times in a row."""


class LogCorrupted(RuntimeError):
    """A task's stream and its record disagree: something wrote outside the store."""


class TaskExists(ValueError):
    """`create_task` with the id of a task that already exists."""


@dataclass
class _Turn:
    lock: asyncio.Lock
    users: int = 0


def _member(create_ns: int, task_id: str) -> bytes:
    if not 0 <= create_ns < _NS_LIMIT:
        raise ValueError(f"create time {create_ns} ns is out of range")
    return f"{create_ns:0{_NS_DIGITS}d}:{task_id}".encode()


def _cursor(member: bytes) -> tuple[int, str]:
    return int(member[:_NS_DIGITS]), member[_NS_DIGITS + 1 :].decode()


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _events(entries: list[Any] | None) -> list[task_pb2.TaskEvent]:
    """The events of XRANGE's entries (each `(id, {b"e": bytes})`)."""
    return [task_pb2.TaskEvent.FromString(_bytes(fields[_FIELD])) for _, fields in entries or []]


def _entry_seq(entry_id: bytes | str) -> int:
    return int(_bytes(entry_id).split(b"-", 1)[0])


def _describe(url: str) -> str:
    """The URL without credentials, for error messages and logs."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"


# Compare-and-set on the lease key: only its holder may renew or release it.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
end
return 0
"""
# Delete the tasks whose member is still in the ended set (a task that was reopened, or
# deleted by another executor meanwhile, is not).
# KEYS: ended, ended-info, tasks, then per task: record, events, lease, cancel, tasks-of-owner.
# ARGV: per task: its id, its member in the ended set, its member in the listings.
_DELETE_ENDED = """
local deleted = {}
for i = 0, #ARGV / 3 - 1 do
  local task_id, ended, listed = ARGV[1 + 3 * i], ARGV[2 + 3 * i], ARGV[3 + 3 * i]
  if redis.call('ZSCORE', KEYS[1], ended) then
    local k = 4 + 5 * i
    redis.call('UNLINK', KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3])
    redis.call('ZREM', KEYS[3], listed)
    redis.call('ZREM', KEYS[k + 4], listed)
    redis.call('ZREM', KEYS[1], ended)
    redis.call('HDEL', KEYS[2], task_id)
    deleted[#deleted + 1] = task_id
  end
end
return deleted
"""


class RedisStore:
    """Store on one Redis primary, shared by any number of executors.

    Connection loss is retried by redis-py (exponential backoff with jitter, bounded); when
    the retries run out the call raises `StoreUnavailable` naming the server. With `retain`
    (seconds, 0 for never) a task's record and events expire that long after it ended.
    """

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        max_conflicts: int = 64,
        where: str = "redis",
        retain: float = 0,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._tasks_key = f"{prefix}tasks"
        self._unfinished_key = f"{prefix}unfinished"
        self._ended_key = f"{prefix}ended"
        self._ended_info_key = f"{prefix}ended-info"
        self._retain_ms = round(retain * 1000)
        self._delete_ended = client.register_script(_DELETE_ENDED)
        self._max_conflicts = max_conflicts
        self.where = where
        """The server, without credentials, as logs and errors name it."""
        self._turns: dict[str, _Turn] = {}
        self.conflicts = 0
        """How many transactions were started over because a watched key changed."""

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        retries: int = 12,
        backoff_base: float = 0.05,
        backoff_cap: float = 2.0,
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        max_conflicts: int = 64,
        retain: float = 0,
    ) -> Self:
        """Open a store on `redis://host:port/db`, `rediss://…` or `unix://path`.

        No connection is made until the first call. With the defaults a call rides out
        roughly 9 to 17 s of Redis being away (a restart, a failover) before it fails.
        """
        client = Redis.from_url(
            url,
            decode_responses=False,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            socket_keepalive=True,
            retry=Retry(EqualJitterBackoff(cap=backoff_cap, base=backoff_base), retries),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        return cls(
            client,
            prefix=prefix,
            max_conflicts=max_conflicts,
            where=_describe(url),
            retain=retain,
        )

    def record_key(self, task_id: str) -> str:
        """The key of the task's record."""
        return f"{self._prefix}task:{task_id}"

    def lease_key(self, task_id: str) -> str:
        """The key that names the executor running the task, expiring with its lease."""
        return f"{self._prefix}lease:{task_id}"

    def cancel_key(self, task_id: str) -> str:
        """The key that holds a pending cancel request's reason."""
        return f"{self._prefix}cancel:{task_id}"

    def events_key(self, task_id: str) -> str:
        """The key of the task's event stream."""
        return f"{self._prefix}events:{task_id}"

    def owner_tasks_key(self, owner: str) -> str:
        """The key of the listing of one owner's tasks."""
        return f"{self._prefix}tasks-of:{owner}"

    def owner_unfinished_key(self, owner: str) -> str:
        """The key of the set of one owner's unfinished tasks."""
        return f"{self._prefix}unfinished-of:{owner}"

    @contextlib.contextmanager
    def _reported(self, what: str) -> Iterator[None]:
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StoreUnavailable(
                f"Redis at {self.where} is unreachable ({what}), retries exhausted: {exc}"
            ) from exc

    @contextlib.asynccontextmanager
    async def _turn(self, task_id: str) -> AsyncIterator[None]:
        """Appends to one task from this process take turns: WATCH is for other processes."""
        turn = self._turns.get(task_id)
        if turn is None:
            turn = self._turns[task_id] = _Turn(asyncio.Lock())
        turn.users += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.users -= 1
            if not turn.users:
                del self._turns[task_id]

    async def _start_over(self, conflicts: int) -> None:
        self.conflicts += 1
        # Two executors racing on one task is rare (only the lease holder runs it); a short
        # growing pause with jitter keeps a burst of them from retrying in lockstep.
        await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**conflicts)))

    async def ping(self) -> None:
        """Check that Redis answers (raises `StoreUnavailable` when it does not)."""
        with self._reported("ping"):
            await self._redis.ping()

    async def create_task(self, task: task_pb2.Task) -> None:
        member = _member(task.create_time.ToNanoseconds(), task.task_id)
        record_key = self.record_key(task.task_id)
        record = task.SerializeToString()
        with self._reported(f"create task {task.task_id}"):
            for conflicts in range(self._max_conflicts + 1):
                if conflicts:
                    await self._start_over(conflicts)
                async with self._redis.pipeline(transaction=True) as pipe:
                    await pipe.watch(record_key)
                    existing = await pipe.get(record_key)
                    if existing is not None:
                        if conflicts and existing == record:
                            return  # our EXEC went through; only its reply was lost
                        raise TaskExists(f"task {task.task_id} already exists")
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(record_key, record)
                    pipe.delete(self.events_key(task.task_id))  # a new task has an empty log
                    pipe.zadd(self._tasks_key, {member: 0})
                    pipe.zadd(self._unfinished_key, {member: 0})
                    pipe.zadd(self.owner_tasks_key(task.owner), {member: 0})
                    pipe.zadd(self.owner_unfinished_key(task.owner), {member: 0})
                    try:
                        await pipe.execute()
                    except WatchError:
                        continue
                    return
        raise AppendContention(
            f"creating task {task.task_id} conflicted {self._max_conflicts + 1} times in a row"
        )

    async def get_task(self, task_id: str) -> task_pb2.Task | None:
        with self._reported(f"get task {task_id}"):
            record = await self._redis.get(self.record_key(task_id))
        return None if record is None else task_pb2.Task.FromString(_bytes(record))

    async def list_tasks(
        self, page_size: int, after: tuple[int, str] | None, owner: str | None = None
    ) -> TaskPage:
        if page_size <= 0:
            return TaskPage([], None)
        if after is None or after[0] >= _NS_LIMIT:
            high = b"+"
        elif after[0] < 0:
            return TaskPage([], None)
        else:
            high = b"(" + _member(*after)
        listing = self._tasks_key if owner is None else self.owner_tasks_key(owner)
        with self._reported("list tasks"):
            members = [
                _bytes(m)
                for m in await self._redis.zrevrangebylex(listing, high, b"-", 0, page_size + 1)
            ]
            page = members[:page_size]
            records = (
                await self._redis.mget([self.record_key(_cursor(m)[1]) for m in page])
                if page
                else []
            )
        # A record that expired before the sweep removed its entry is left out.
        tasks = [task_pb2.Task.FromString(_bytes(r)) for r in records if r is not None]
        more = len(members) > page_size
        return TaskPage(tasks, _cursor(page[-1]) if more else None)

    async def count_unfinished(self, owner: str) -> int:
        with self._reported(f"count the unfinished tasks of {owner!r}"):
            return int(await self._redis.zcard(self.owner_unfinished_key(owner)))

    async def append(
        self,
        task_id: str,
        events: Sequence[task_pb2.TaskEvent],
        *,
        owner: str | None = None,
    ) -> list[task_pb2.TaskEvent]:
        """Append events atomically; see `Store.append`.

        With `owner`, the task's lease key is watched and checked inside the same
        optimistic transaction: the append is refused with `LeaseLost` unless that key
        holds `owner` when the transaction commits.
        """
        fence = None if owner is None else (self.lease_key(task_id), owner)
        attempted: list[task_pb2.TaskEvent] = []
        async with self._turn(task_id):
            with self._reported(f"append to task {task_id}"):
                for conflicts in range(self._max_conflicts + 1):
                    if conflicts:
                        await self._start_over(conflicts)
                    try:
                        return await self._append_once(task_id, events, fence, attempted)
                    except WatchError:
                        continue
        raise AppendContention(
            f"append to task {task_id} conflicted {self._max_conflicts + 1} times in a row:"
            " another writer keeps changing it"
        )

    async def _append_once(
        self,
        task_id: str,
        events: Sequence[task_pb2.TaskEvent],
        fence: tuple[str, str] | None,
        attempted: list[task_pb2.TaskEvent],
    ) -> list[task_pb2.TaskEvent]:
        """One optimistic try; raises WatchError when it must start over.

        `attempted` holds what the previous try sent to EXEC: when that EXEC's reply was
        lost with the connection, it may have committed, and appending again would store
        the events twice.
        """
        record_key = self.record_key(task_id)
        events_key = self.events_key(task_id)
        watched = [record_key, events_key] if fence is None else [record_key, events_key, fence[0]]
        async with self._redis.pipeline(transaction=True) as pipe:
            await pipe.watch(*watched)
            # Read after WATCH, on another connection, in one round trip: any change from
            # here on makes the EXEC below fail. MULTI makes the reads one snapshot, so a
            # writer committing between them cannot pass for a corrupted log.
            async with self._redis.pipeline(transaction=True) as snapshot:
                snapshot.get(record_key)
                snapshot.xrevrange(events_key, count=1)
                if fence is not None:
                    snapshot.get(fence[0])
                raw_record, top, *owner = await snapshot.execute()
            if raw_record is None:
                raise KeyError(task_id)
            task = task_pb2.Task.FromString(_bytes(raw_record))
            stream_seq = _entry_seq(top[0][0]) if top else 0
            if stream_seq != task.last_seq:
                raise LogCorrupted(
                    f"task {task_id}: its record ends at seq {task.last_seq} but its stream"
                    f" {events_key} at {stream_seq}; refusing to append"
                )
            if attempted and await self._committed(events_key, task, attempted):
                return attempted
            if fence is not None and owner[0] != fence[1].encode():
                raise LeaseLost(
                    f"task {task_id}: lease {fence[0]} is held by"
                    f" {owner[0]!r}, not {fence[1]!r}; append refused"
                )
            was_terminal = task.state in TERMINAL_STATES
            stored = stamp_events(task, events)
            if not stored:
                return []
            is_terminal = task.state in TERMINAL_STATES
            reopened = was_terminal and not is_terminal
            # Rare (nothing in the executor reopens a task): the ended set needs the end time.
            info = await self._redis.hget(self._ended_info_key, task_id) if reopened else None
            pipe.multi()  # type: ignore[no-untyped-call]
            for event in stored:
                pipe.xadd(events_key, {_FIELD: event.SerializeToString()}, id=f"{event.seq}-0")
            # KEEPTTL: an event appended after the end does not undo the expiry.
            pipe.set(record_key, task.SerializeToString(), keepttl=True)
            if is_terminal and not was_terminal:
                self._record_end(pipe, task)
            elif reopened:
                self._record_reopen(pipe, task, info)
            attempted[:] = stored
            try:
                await self._commit(pipe)
            except ResponseError as exc:
                raise LogCorrupted(f"task {task_id}: the append was refused: {exc}") from exc
            return stored

    def _record_end(self, pipe: Pipeline, task: task_pb2.Task) -> None:
        """Queue what a task's end changes: the unfinished sets, the ended set, expiry."""
        create_ns, end_ns = task.create_time.ToNanoseconds(), task.update_time.ToNanoseconds()
        member = _member(create_ns, task.task_id)
        pipe.zrem(self._unfinished_key, member)
        pipe.zrem(self.owner_unfinished_key(task.owner), member)
        pipe.zadd(self._ended_key, {_member(end_ns, task.task_id): 0})
        info = f"{end_ns}:{create_ns}:{task.owner}"
        pipe.hset(self._ended_info_key, task.task_id, info.encode())
        if self._retain_ms:
            end_ms = end_ns // _NS_PER_MS
            pipe.pexpireat(self.record_key(task.task_id), end_ms + self._retain_ms)
            pipe.pexpireat(
                self.events_key(task.task_id),
                end_ms + self._retain_ms + _STREAM_OUTLIVES_RECORD_MS,
            )

    def _record_reopen(self, pipe: Pipeline, task: task_pb2.Task, info: bytes | str | None) -> None:
        """Queue the undoing of `_record_end`, for a task that left its terminal state;
        `info` is its entry in the ended-info hash."""
        member = _member(task.create_time.ToNanoseconds(), task.task_id)
        pipe.zadd(self._unfinished_key, {member: 0})
        pipe.zadd(self.owner_unfinished_key(task.owner), {member: 0})
        if info is not None:
            end_ns = int(_bytes(info).split(b":", 1)[0])
            pipe.zrem(self._ended_key, _member(end_ns, task.task_id))
        pipe.hdel(self._ended_info_key, task.task_id)
        pipe.persist(self.record_key(task.task_id))
        pipe.persist(self.events_key(task.task_id))

    async def _commit(self, pipe: Pipeline) -> None:
        await pipe.execute()

    async def _committed(
        self, events_key: str, task: task_pb2.Task, attempted: list[task_pb2.TaskEvent]
    ) -> bool:
        """Whether the events of an earlier try are in the log as they were sent."""
        first, last = attempted[0].seq, attempted[-1].seq
        if task.last_seq < last:
            return False
        entries = await self._redis.xrange(events_key, f"{first}-0", f"{last}-0")
        return _events(entries) == attempted

    async def read_events(
        self, task_id: str, after_seq: int, limit: int
    ) -> list[task_pb2.TaskEvent]:
        if limit == 0:
            return []
        start = "-" if after_seq < 0 else f"{after_seq + 1}-0"
        with self._reported(f"read events of task {task_id}"):
            entries = await self._redis.xrange(
                self.events_key(task_id), start, "+", count=limit if limit > 0 else None
            )
        return _events(entries)

    async def read_new_events(
        self, after: Mapping[str, int], block_ms: int
    ) -> dict[str, list[task_pb2.TaskEvent]]:
        """Return the events after each task's seq, waiting up to `block_ms` for any."""
        streams: dict[Any, Any] = {
            self.events_key(task_id): f"{seq}-0" for task_id, seq in after.items()
        }
        with self._reported("read live events"):
            reply = cast("list[Any]", await self._redis.xread(streams, block=block_ms) or [])
        prefix = len(self.events_key(""))
        return {_bytes(key).decode()[prefix:]: _events(entries) for key, entries in reply}

    async def unfinished_task_ids(self) -> list[str]:
        with self._reported("list unfinished tasks"):
            members = await self._redis.zrangebylex(self._unfinished_key, b"-", b"+")
        return [_cursor(_bytes(m))[1] for m in members]

    async def ended_before(self, before_ns: int, limit: int) -> list[str]:
        if before_ns <= 0 or limit <= 0:
            return []
        # "<end ns>:<id>" sorts below "<before ns>" exactly when end ns < before ns.
        high = b"(" + f"{min(before_ns, _NS_LIMIT - 1):0{_NS_DIGITS}d}".encode()
        with self._reported("list ended tasks"):
            members = await self._redis.zrangebylex(self._ended_key, b"-", high, 0, limit)
        return [_cursor(_bytes(m))[1] for m in members]

    async def delete_ended(self, task_ids: Sequence[str], before_ns: int) -> list[str]:
        """Delete in one script, which checks each task's end time again: a task that left
        the ended set meanwhile (or another executor's sweep deleted) is skipped."""
        if not task_ids:
            return []
        with self._reported("delete ended tasks"):
            infos = await self._redis.hmget(self._ended_info_key, list(task_ids))
            keys = [self._ended_key, self._ended_info_key, self._tasks_key]
            args: list[str] = []
            for task_id, info in zip(task_ids, infos, strict=True):
                if info is None:
                    continue
                end_ns, create_ns, owner = _bytes(info).decode().split(":", 2)
                if int(end_ns) >= before_ns:
                    continue
                keys += [
                    self.record_key(task_id),
                    self.events_key(task_id),
                    self.lease_key(task_id),
                    self.cancel_key(task_id),
                    self.owner_tasks_key(owner),
                ]
                args += [
                    task_id,
                    _member(int(end_ns), task_id).decode(),
                    _member(int(create_ns), task_id).decode(),
                ]
            if len(keys) == 3:
                return []
            deleted = await self._delete_ended(keys=keys, args=args)
        return [_bytes(task_id).decode() for task_id in deleted]

    async def acquire_lease(self, task_id: str, owner: str, ttl: float) -> bool:
        with self._reported(f"take the lease of task {task_id}"):
            result = await self._redis.eval(
                _ACQUIRE, 1, self.lease_key(task_id), owner, int(ttl * 1000)
            )
        return bool(result)

    async def renew_lease(self, task_id: str, owner: str, ttl: float) -> bool:
        with self._reported(f"renew the lease of task {task_id}"):
            result = await self._redis.eval(
                _RENEW, 1, self.lease_key(task_id), owner, int(ttl * 1000)
            )
        return bool(result)

    async def release_lease(self, task_id: str, owner: str) -> None:
        with self._reported(f"release the lease of task {task_id}"):
            await self._redis.eval(
                _RELEASE, 2, self.lease_key(task_id), self.cancel_key(task_id), owner
            )

    async def request_cancel(self, task_id: str, reason: str) -> None:
        with self._reported(f"request the cancel of task {task_id}"):
            await self._redis.set(self.cancel_key(task_id), reason.encode(), ex=3600)

    async def cancel_requested(self, task_id: str) -> str | None:
        with self._reported(f"read the cancel request of task {task_id}"):
            reason = await self._redis.get(self.cancel_key(task_id))
        return None if reason is None else _bytes(reason).decode()

    async def close(self) -> None:
        await self._redis.aclose()
