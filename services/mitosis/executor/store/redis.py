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

An append is one script call (`_APPEND`, by EVALSHA): the store folds the events into the
newest record it knows (`stamp_events`, in Python), and the script writes the XADDs, the
new record and the index changes only if the stream still ends at that record's seq and,
for a fenced append, the lease key holds the caller; Redis runs a script alone, so no other
writer comes in between. Otherwise it answers with the newest record, and the append
starts over from it: one round trip for the executor that runs the task, two when another
wrote since. A retry of a call whose reply was lost finds its own events at the end of the
stream and answers "already appended" instead of writing them twice.

The keys of one task and the sorted sets live in different hash slots: this is for a
single Redis primary (with replicas or Sentinel), not Redis Cluster.

Retention: with `retain`, the script that appends a task's terminal event also gives
its record and its stream an expiry (PEXPIREAT), so Redis deletes them on its own even if no
executor is left to sweep; `delete_ended` (the retention sweep) deletes them on time and
removes the index entries, which do not expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self, cast
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mitosis.executor.store.base import (
    Change,
    Expect,
    LeaseLost,
    TaskPage,
    check_append,
    events_of,
)
from mitosis.executor.store.base import StoreUnavailable as StoreUnavailable  # its old home
from mitosis.executor.store.encoded import EncodedEvent, stored_batch
from mitosis.projection import TERMINAL_STATES, stamp_events
from mitosis.v1 import task_pb2

DEFAULT_PREFIX = "mitosis:"

_FIELD = b"e"
_NS_PER_MS = 1_000_000
_STREAM_OUTLIVES_RECORD_MS = 60_000
"""The stream expires a minute after the record: a task is never visible without its log."""
_NS_DIGITS = 20
_RECORDS_KEPT = 1024
_NS_LIMIT = 10**_NS_DIGITS


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


def _encoded(entries: list[Any] | None) -> list[EncodedEvent]:
    """XRANGE's entries as stored bytes, unparsed (the entry id is `<seq>-0`)."""
    rows = [
        (int(_bytes(entry_id).split(b"-", 1)[0]), _bytes(fields[_FIELD]))
        for entry_id, fields in entries or []
    ]
    return stored_batch(rows)


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
  redis.call('DEL', KEYS[1])
end
return 0
"""
# Append events to a task whose record this executor holds, in one step. Answers
# {"appended"}, {"already appended"} (the same events are in the log already: this call is
# a retry of one whose reply was lost), {"missing"}, {"fenced", holder} or, when the stream
# does not end at the expected seq, {"stale", newest record, the stream's seq}.
# KEYS: record, events, lease, unfinished, unfinished-of-owner, ended, ended-info.
# ARGV: expected seq, fencing owner ("" for none), n, the n events, the new record, mode
# ("end" when these events end the task, else ""), task id, member in the listings, member
# in the ended set, the ended-info entry, the expiry of the record and of the stream (Unix
# ms, 0 for none).
_APPEND = """
local n = tonumber(ARGV[3])
local r = 3 + n
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local expected = tonumber(ARGV[1])
local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local last = 0
if top[1] then last = tonumber(string.match(top[1][1], '^%d+')) end
if last ~= expected then
  if last == expected + n then
    local entries = redis.call('XRANGE', KEYS[2], (expected + 1) .. '-0', last .. '-0')
    local same = #entries == n
    for i = 1, #entries do
      if entries[i][2][2] ~= ARGV[3 + i] then same = false break end
    end
    if same then return {'already appended'} end
  end
  return {'stale', redis.call('GET', KEYS[1]), last}
end
if ARGV[2] ~= '' then
  local holder = redis.call('GET', KEYS[3])
  if holder ~= ARGV[2] then return {'fenced', holder or ''} end
end
for i = 1, n do
  redis.call('XADD', KEYS[2], (expected + i) .. '-0', 'e', ARGV[3 + i])
end
-- KEEPTTL: the record keeps any expiry it has.
redis.call('SET', KEYS[1], ARGV[r + 1], 'KEEPTTL')
local mode, task_id, member = ARGV[r + 2], ARGV[r + 3], ARGV[r + 4]
if mode == 'end' then
  redis.call('ZREM', KEYS[4], member)
  redis.call('ZREM', KEYS[5], member)
  redis.call('ZADD', KEYS[6], 0, ARGV[r + 5])
  redis.call('HSET', KEYS[7], task_id, ARGV[r + 6])
  if ARGV[r + 7] ~= '0' then
    redis.call('PEXPIREAT', KEYS[1], ARGV[r + 7])
    redis.call('PEXPIREAT', KEYS[2], ARGV[r + 8])
  end
end
return {'appended'}
"""
# Delete the tasks whose member is still in the ended set (a task deleted by another
# executor meanwhile is not).
# KEYS: ended, ended-info, tasks, then per task: record, events, lease, tasks-of-owner.
# ARGV: per task: its id, its member in the ended set, its member in the listings.
_DELETE_ENDED = """
local deleted = {}
for i = 0, #ARGV / 3 - 1 do
  local task_id, ended, listed = ARGV[1 + 3 * i], ARGV[2 + 3 * i], ARGV[3 + 3 * i]
  if redis.call('ZSCORE', KEYS[1], ended) then
    local k = 4 + 4 * i
    redis.call('UNLINK', KEYS[k], KEYS[k + 1], KEYS[k + 2])
    redis.call('ZREM', KEYS[3], listed)
    redis.call('ZREM', KEYS[k + 3], listed)
    redis.call('ZREM', KEYS[1], ended)
    redis.call('HDEL', KEYS[2], task_id)
    deleted[#deleted + 1] = task_id
  end
end
return deleted
"""


@dataclass
class _QueuedAppend:
    """One `_APPEND` call waiting for the next pipeline."""

    keys: list[str]
    args: list[bytes | str | int]
    done: asyncio.Future[list[Any]]


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
        self._append_script = client.register_script(_APPEND)
        self._delete_ended = client.register_script(_DELETE_ENDED)
        self._records: OrderedDict[str, task_pb2.Task] = OrderedDict()
        """The newest record of the tasks this store appended to lately, newest use last."""
        self._max_conflicts = max_conflicts
        self.where = where
        """The server, without credentials, as logs and errors name it."""
        self._turns: dict[str, _Turn] = {}
        self.conflicts = 0
        """How many transactions were started over because a watched key changed."""
        self._queued: list[_QueuedAppend] = []
        self._sending: set[asyncio.Task[None]] = set()
        self.round_trips = 0
        """How many times appends went to Redis: one pipeline of all those asked for in one
        turn of the event loop (group commit), so at most one per append."""

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
        max_connections: int = 64,
        connection_wait: float = 30.0,
    ) -> Self:
        """Open a store on `redis://host:port/db`, `rediss://…` or `unix://path`.

        No connection is made until the first call. With the defaults a call rides out
        roughly 9 to 17 s of Redis being away (a restart, a failover) before it fails.
        """
        # A blocking pool: under a burst of tasks a call waits its turn for one of
        # `max_connections` connections instead of failing (the default pool refuses).
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=connection_wait,
            decode_responses=False,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            socket_keepalive=True,
            retry=Retry(EqualJitterBackoff(cap=backoff_cap, base=backoff_base), retries),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        client = Redis.from_pool(pool)
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
                    self._remember(task_pb2.Task.FromString(record))
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
        events: Sequence[task_pb2.TaskEvent] | Change,
        *,
        owner: str | None = None,
        expect: Expect | None = None,
    ) -> list[task_pb2.TaskEvent]:
        """Append events atomically; see `Store.append`.

        One script call (`_APPEND`) when this store has the task's newest record: the script
        checks that the stream still ends where that record does, checks the fence (the
        lease key holds `owner`) and writes, all at once. When another writer got there
        first it answers with the newest record, and the append starts over from it. The
        preconditions (`expect`, no event after the end) and a Change are applied to the
        record the script then checks is the newest, so they hold at the write.
        """
        async with self._turn(task_id):
            with self._reported(f"append to task {task_id}"):
                for conflicts in range(self._max_conflicts + 1):
                    if conflicts:
                        await self._start_over(conflicts)
                    stored = await self._append_once(task_id, events, owner, expect)
                    if stored is not None:
                        return stored
        raise AppendContention(
            f"append to task {task_id} conflicted {self._max_conflicts + 1} times in a row:"
            " another writer keeps changing it"
        )

    async def _append_once(
        self,
        task_id: str,
        events: Sequence[task_pb2.TaskEvent] | Change,
        owner: str | None,
        expect: Expect | None,
    ) -> list[task_pb2.TaskEvent] | None:
        """One try from the newest record this store knows; None when it must start over."""
        task = await self._newest_record(task_id)
        check_append(task, expect)
        expected_seq = task.last_seq
        was_terminal = task.state in TERMINAL_STATES
        stored = stamp_events(task, events_of(task, events))
        if not stored:
            return []
        is_terminal = task.state in TERMINAL_STATES
        mode = "end" if is_terminal and not was_terminal else ""
        create_ns, end_ns = task.create_time.ToNanoseconds(), task.update_time.ToNanoseconds()
        expire_ms = end_ns // _NS_PER_MS + self._retain_ms if self._retain_ms else 0
        keys = [
            self.record_key(task_id),
            self.events_key(task_id),
            self.lease_key(task_id),
            self._unfinished_key,
            self.owner_unfinished_key(task.owner),
            self._ended_key,
            self._ended_info_key,
        ]
        args: list[bytes | str | int] = [
            expected_seq,
            owner or "",
            len(stored),
            *(event.SerializeToString() for event in stored),
            task.SerializeToString(),
            mode,
            task_id,
            _member(create_ns, task_id),
            _member(end_ns, task_id),
            f"{end_ns}:{create_ns}:{task.owner}",
            expire_ms,
            expire_ms + _STREAM_OUTLIVES_RECORD_MS if expire_ms else 0,
        ]
        try:
            reply = await self._run_append(keys, args)
        except ResponseError as exc:
            self._records.pop(task_id, None)
            raise LogCorrupted(f"task {task_id}: the append was refused: {exc}") from exc
        status = _bytes(reply[0])
        if status in (b"appended", b"already appended"):
            self._remember(task)
            return stored
        if status == b"missing":
            self._records.pop(task_id, None)
            raise KeyError(task_id)
        if status == b"fenced":
            holder = _bytes(reply[1]).decode() or None
            raise LeaseLost(
                f"task {task_id}: lease {self.lease_key(task_id)} is held by"
                f" {holder!r}, not {owner!r}; append refused"
            )
        newest, stream_seq = task_pb2.Task.FromString(_bytes(reply[1])), int(reply[2])
        if newest.last_seq != stream_seq:
            self._records.pop(task_id, None)
            raise LogCorrupted(
                f"task {task_id}: its record ends at seq {newest.last_seq} but its stream"
                f" {self.events_key(task_id)} at {stream_seq}; refusing to append"
            )
        self._remember(newest)
        return None

    async def _run_append(self, keys: list[str], args: list[bytes | str | int]) -> list[Any]:
        """Run `_APPEND` (EVALSHA; redis-py loads the script again after a Redis restart).

        Group commit: the calls made in one turn of the event loop (appends to different
        tasks: one task's take turns) go to Redis in one pipeline, one round trip for all.
        Each script is still atomic on its own, and answers for its own append.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Any]] = loop.create_future()
        self._queued.append(_QueuedAppend(keys, args, done))
        if len(self._queued) == 1:
            loop.call_soon(self._send_queued)
        return await asyncio.shield(done)  # a cancelled caller leaves the others' batch be

    def _send_queued(self) -> None:
        batch, self._queued = self._queued, []
        sending = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(sending)
        sending.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_QueuedAppend]) -> None:
        self.round_trips += 1
        replies: list[Any]
        try:
            if len(batch) == 1:
                replies = [await self._append_script(keys=batch[0].keys, args=batch[0].args)]
            else:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for queued in batch:
                        await self._append_script(keys=queued.keys, args=queued.args, client=pipe)
                    replies = await pipe.execute(raise_on_error=False)
        except Exception as error:  # the connection, after redis-py's retries: all of them
            for queued in batch:
                if not queued.done.done():
                    queued.done.set_exception(error)
            return
        except BaseException:  # stopped mid-send: nobody learns what Redis did
            for queued in batch:
                queued.done.cancel()
            raise
        for queued, reply in zip(batch, replies, strict=True):
            if queued.done.done():
                continue
            if isinstance(reply, Exception):
                queued.done.set_exception(reply)
            else:
                queued.done.set_result(cast("list[Any]", reply))

    async def _newest_record(self, task_id: str) -> task_pb2.Task:
        """A copy of the newest record this store knows of the task (read it if none)."""
        task = task_pb2.Task()
        known = self._records.get(task_id)
        if known is not None:
            self._records.move_to_end(task_id)
            task.CopyFrom(known)
            return task
        record = await self._redis.get(self.record_key(task_id))
        if record is None:
            raise KeyError(task_id)
        task.ParseFromString(_bytes(record))
        return task

    def _remember(self, task: task_pb2.Task) -> None:
        self._records[task.task_id] = task
        self._records.move_to_end(task.task_id)
        if len(self._records) > _RECORDS_KEPT:
            self._records.popitem(last=False)

    async def read_events(
        self, task_id: str, after_seq: int, limit: int
    ) -> list[task_pb2.TaskEvent]:
        return _events(await self._entries(task_id, after_seq, limit))

    async def read_encoded(self, task_id: str, after_seq: int, limit: int) -> list[EncodedEvent]:
        return _encoded(await self._entries(task_id, after_seq, limit))

    async def _entries(self, task_id: str, after_seq: int, limit: int) -> list[Any]:
        """XRANGE's entries of up to `limit` events with `seq > after_seq`."""
        if limit == 0:
            return []
        start = "-" if after_seq < 0 else f"{after_seq + 1}-0"
        with self._reported(f"read events of task {task_id}"):
            entries = await self._redis.xrange(
                self.events_key(task_id), start, "+", count=limit if limit > 0 else None
            )
        return list(entries or [])

    async def read_new_events(
        self, after: Mapping[str, int], block_ms: int
    ) -> dict[str, list[EncodedEvent]]:
        """Return the events after each task's seq, waiting up to `block_ms` for any."""
        streams: dict[Any, Any] = {
            self.events_key(task_id): f"{seq}-0" for task_id, seq in after.items()
        }
        with self._reported("read live events"):
            reply = cast("list[Any]", await self._redis.xread(streams, block=block_ms) or [])
        prefix = len(self.events_key(""))
        return {_bytes(key).decode()[prefix:]: _encoded(entries) for key, entries in reply}

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
                    self.owner_tasks_key(owner),
                ]
                args += [
                    task_id,
                    _member(int(end_ns), task_id).decode(),
                    _member(int(create_ns), task_id).decode(),
                ]
            if len(keys) == 3:
                return []
            deleted = [
                _bytes(task_id).decode()
                for task_id in await self._delete_ended(keys=keys, args=args)
            ]
        for task_id in deleted:
            self._records.pop(task_id, None)
        return deleted

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
            await self._redis.eval(_RELEASE, 1, self.lease_key(task_id), owner)

    async def close(self) -> None:
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
        await self._redis.aclose()
