"""The servers under test, each in its own process: `python -m bench.servers KIND`.

- `mitosis`: the real executor (`mitosis.executor.server.start_executor`: SQLite store, event
  hub, EventLog, TaskService) with a side loop that appends synthetic events to a task
  through the executor's own EventLog, at a given rate. No planner, no model.
- `bare`: the bare transport: a minimal grpc.aio server-streaming RPC (TaskService.WatchTask
  with the same messages and the same server options, health for Envoy), no store: each
  event goes to an asyncio.Queue per watcher.
- `socketio`: the Socket.IO peer: python-socketio's ASGI server under uvicorn (its default
  event loop, uvloop when installed), pushing the same events as JSON to a room, no store.

Each prints `{"port": N, "pid": P}` on its first stdout line, then reads one JSON command per
line on stdin and answers one JSON line on stdout:

    {"op": "new"}                                  -> {"task_id": ...}
    {"op": "wait", "task_id", "watchers", "timeout"}  -> {"watchers": n}   (subscribed now)
    {"op": "emit", "task_id", "count", "rate", "finish"} -> {"elapsed": s}
        appends `count` events (rate 0: as fast as possible), then the terminal one if finish
    {"op": "preload", "task_id", "count", "batch"} -> {"elapsed": s}   (mitosis only)
    {"op": "quit"}                                 -> exits

A server dies with the process that started it (PR_SET_PDEATHSIG), so an interrupted
benchmark leaves nothing running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import secrets
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import grpc

from bench.payloads import DONE, Shape, Shapes, json_event, task_event
from mitosis.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to send SIGTERM when the parent process dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Source(Protocol):
    """A server's side of the benchmark: streams it can create and append to."""

    async def new(self) -> str: ...

    def watchers(self, task_id: str) -> int: ...

    async def append(self, task_id: str, shapes: Sequence[Shape]) -> None: ...


async def emit(source: Source, task_id: str, count: int, rate: float, finish: bool) -> float:
    """Append `count` events at `rate` per second (0: as fast as possible); return seconds.

    Paced against an absolute schedule: an event that is due is appended at once, so the
    average rate holds even when the loop wakes late. Every append yields to the event loop,
    so the server goes on sending while it appends.
    """
    shapes = Shapes()
    start = time.perf_counter()
    for i in range(count):
        if rate > 0:
            delay = start + i / rate - time.perf_counter()
            await asyncio.sleep(max(delay, 0.0))
        else:
            await asyncio.sleep(0)
        await source.append(task_id, [shapes.next()])
    if finish:
        await asyncio.sleep(0)
        await source.append(task_id, [DONE])
    return time.perf_counter() - start


# --- mitosis: the real executor ------------------------------------------------------------


class MitosisSource:
    """The real executor; events go through its EventLog (store first, then the hub)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = 0
        self._executor: Any = None

    async def start(self) -> None:
        from mitosis.executor.server import parse_args, start_executor

        args = parse_args(
            [
                "--listen=127.0.0.1:0",
                "--planner=127.0.0.1:9",  # never called: no task here is planned
                f"--data-dir={self.data_dir}",
                "--model=offline",
                # Synthetic tasks are not the runner's to take over: its claim loop sleeps.
                "--lease-ttl=86400",
                "--log-level=warning",
            ]
        )
        self._executor = await start_executor(args)
        self.port = self._executor.port
        self.log = self._executor.log

    async def stop(self) -> None:
        if self._executor is not None:
            await self._executor.stop(0)

    async def new(self) -> str:
        task = task_pb2.Task(
            task_id=secrets.token_hex(8),
            text="benchmark stream",
            state=task_pb2.Task.STATE_RUNNING,
            model="bench",
        )
        task.create_time.FromNanoseconds(time.time_ns())
        task.update_time.CopyFrom(task.create_time)
        await self.log.store.create_task(task)
        return task.task_id

    def watchers(self, task_id: str) -> int:
        return self.log.hub.watcher_count(task_id)

    async def append(self, task_id: str, shapes: Sequence[Shape]) -> None:
        await self.log.append(task_id, *(task_event(shape) for shape in shapes))

    async def preload(self, task_id: str, count: int, batch: int) -> float:
        """Append `count` events in transactions of `batch`, then the terminal event."""
        shapes = Shapes()
        start = time.perf_counter()
        for first in range(0, count, batch):
            size = min(batch, count - first)
            await self.append(task_id, [shapes.next() for _ in range(size)])
            await asyncio.sleep(0)
        await self.append(task_id, [DONE])
        return time.perf_counter() - start


# --- bare: a minimal grpcio server-streaming RPC, no store --------------------------------


class _Topic:
    def __init__(self) -> None:
        self.seq = 0
        self.queues: set[asyncio.Queue[task_pb2.TaskEvent]] = set()


class BareServicer(task_service_pb2_grpc.TaskServiceServicer):
    """WatchTask only: each watcher reads its own queue until the terminal event."""

    def __init__(self, topics: dict[str, _Topic]) -> None:
        self._topics = topics

    async def WatchTask(
        self, request: task_service_pb2.WatchTaskRequest, context: Any
    ) -> AsyncIterator[task_service_pb2.WatchTaskResponse]:
        topic = self._topics.get(request.task_id)
        if topic is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such stream")
            return
        queue: asyncio.Queue[task_pb2.TaskEvent] = asyncio.Queue()
        topic.queues.add(queue)
        try:
            while True:
                event = await queue.get()
                yield task_service_pb2.WatchTaskResponse(events=[event])  # one event a message
                if event.HasField("task_state_changed"):
                    return
        finally:
            topic.queues.discard(queue)


class BareSource:
    """Serves BareServicer with the same server setup as the executor (mitosis.rpc.serving)."""

    def __init__(self) -> None:
        self.port = 0
        self._topics: dict[str, _Topic] = {}
        self._serving: Any = None

    async def start(self) -> None:
        from mitosis.rpc.serving import Serving

        name = task_service_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name
        self._serving = Serving([name])
        servicer = BareServicer(self._topics)  # type: ignore[abstract]  # WatchTask only
        task_service_pb2_grpc.add_TaskServiceServicer_to_server(servicer, self._serving.server)
        self.port = self._serving.listen("127.0.0.1:0")
        await self._serving.start()

    async def stop(self) -> None:
        if self._serving is not None:
            await self._serving.stop(0)

    async def new(self) -> str:
        task_id = secrets.token_hex(8)
        self._topics[task_id] = _Topic()
        return task_id

    def watchers(self, task_id: str) -> int:
        return len(self._topics[task_id].queues)

    async def append(self, task_id: str, shapes: Sequence[Shape]) -> None:
        topic = self._topics[task_id]
        for shape in shapes:
            event = task_event(shape)
            topic.seq += 1
            event.task_id = task_id
            event.seq = topic.seq
            event.create_time.FromNanoseconds(time.time_ns())
            for queue in topic.queues:
                queue.put_nowait(event)


# --- socketio: python-socketio's ASGI server under uvicorn, no store ----------------------


class SocketIOSource:
    """python-socketio AsyncServer (ASGI) under uvicorn; one room per stream."""

    def __init__(self) -> None:
        import socketio  # type: ignore[import-untyped]

        self.port = 0
        self._seq: dict[str, int] = {}
        self._members: dict[str, set[str]] = {}
        self.sio = socketio.AsyncServer(async_mode="asgi", logger=False, engineio_logger=False)
        self.app = socketio.ASGIApp(self.sio)
        self._server: Any = None
        self._serve_task: asyncio.Task[None] | None = None

        @self.sio.event  # type: ignore[untyped-decorator]
        async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any]) -> None:
            room = str((auth or {}).get("task_id", ""))
            await self.sio.enter_room(sid, room)
            await self.sio.save_session(sid, {"room": room})
            self._members.setdefault(room, set()).add(sid)

        @self.sio.event  # type: ignore[untyped-decorator]
        async def disconnect(sid: str, *args: Any) -> None:
            session = await self.sio.get_session(sid)
            self._members.get(session.get("room", ""), set()).discard(sid)

    async def start(self) -> None:
        import uvicorn

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._serve_task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._serve_task.done():
                self._serve_task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None and self._serve_task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._serve_task, 5)

    async def new(self) -> str:
        task_id = secrets.token_hex(8)
        self._seq[task_id] = 0
        return task_id

    def watchers(self, task_id: str) -> int:
        return len(self._members.get(task_id, ()))

    async def append(self, task_id: str, shapes: Sequence[Shape]) -> None:
        for shape in shapes:
            self._seq[task_id] += 1
            data = json_event(shape, task_id, self._seq[task_id], time.time_ns())
            await self.sio.emit("event", data, room=task_id)


# --- the control loop ----------------------------------------------------------------------


def _reply(value: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


async def control(source: Any) -> None:
    """Answer the commands on stdin until "quit" or end of input."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    import os

    _reply({"port": source.port, "pid": os.getpid()})
    while line := await reader.readline():
        command = json.loads(line)
        op = command["op"]
        try:
            if op == "quit":
                break
            if op == "new":
                _reply({"task_id": await source.new()})
            elif op == "wait":
                deadline = time.monotonic() + float(command.get("timeout", 30))
                want = int(command["watchers"])
                while source.watchers(command["task_id"]) < want:
                    if time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.005)
                _reply({"watchers": source.watchers(command["task_id"])})
            elif op == "emit":
                elapsed = await emit(
                    source,
                    command["task_id"],
                    int(command["count"]),
                    float(command["rate"]),
                    bool(command.get("finish", True)),
                )
                _reply({"elapsed": elapsed})
            elif op == "preload":
                elapsed = await source.preload(
                    command["task_id"], int(command["count"]), int(command.get("batch", 1000))
                )
                _reply({"elapsed": elapsed})
            else:
                _reply({"error": f"unknown op {op!r}"})
        except Exception as error:  # the parent sees the error and stops the run
            logging.exception("command %s failed", op)
            _reply({"error": repr(error)})


async def serve(kind: str, data_dir: Path) -> None:
    source: Any
    if kind == "mitosis":
        source = MitosisSource(data_dir)
    elif kind == "bare":
        source = BareSource()
    elif kind == "socketio":
        source = SocketIOSource()
    else:
        raise SystemExit(f"unknown server kind {kind!r}")
    await source.start()
    try:
        await control(source)
    finally:
        await source.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.servers")
    parser.add_argument("kind", choices=["mitosis", "bare", "socketio"])
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    die_with_parent()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.data_dir is None and args.kind == "mitosis":
        parser.error("the mitosis server needs --data-dir (its SQLite store and workspaces)")
    data_dir = args.data_dir or Path(".")  # the other servers store nothing
    if args.kind == "socketio":
        try:
            import uvloop
        except ImportError:  # uvicorn's own default: uvloop when it is installed
            asyncio.run(serve(args.kind, data_dir))
        else:
            uvloop.run(serve(args.kind, data_dir))
    else:
        asyncio.run(serve(args.kind, data_dir))


if __name__ == "__main__":
    main()
