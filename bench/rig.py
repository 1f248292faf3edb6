"""The servers of one benchmark run, and one measured stream over any transport.

A transport is a server and the way a watcher reaches it:

| name           | server                          | watcher                                   |
| -------------- | ------------------------------- | ----------------------------------------- |
| mitosis-native | the executor (bench.servers)    | native gRPC, straight to the executor     |
| mitosis-web    | the executor                    | gRPC-Web over HTTP/1.1 through Envoy      |
| bare-web       | a minimal grpcio streaming RPC  | gRPC-Web through the same Envoy config    |
| bare-native    | the same minimal RPC            | native gRPC, straight (a reference)       |
| socketio       | python-socketio under uvicorn   | python-socketio AsyncClient, WebSocket    |
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.clients import (
    Received,
    SocketIOWatcher,
    native_channel,
    watch_grpc_web,
    watch_native,
)
from bench.procs import BenchServer, Envoy, Machine, Usage
from bench.stats import latency_summary

TRANSPORTS = ("mitosis-native", "mitosis-web", "bare-web", "bare-native", "socketio")
LABELS = {
    "mitosis-native": "Mitosis, native gRPC → executor",
    "mitosis-web": "Mitosis, gRPC-Web → Envoy → executor",
    "bare-web": "bare grpcio, gRPC-Web → Envoy",
    "bare-native": "bare grpcio, native gRPC (reference)",
    "socketio": "Socket.IO (uvicorn, WebSocket)",
}
WATCHERS_PER_CHANNEL = 10
"""Native watchers share a channel (one TCP connection) ten at a time, at most."""


@dataclass
class Endpoint:
    """Where a transport's watchers go, and the process that serves them."""

    server: BenchServer
    kind: str
    """"native", "web" or "socketio"."""
    url: str
    envoy: Envoy | None = None


@dataclass
class StreamRun:
    """One measured stream: `watchers` watchers, `count` events, then the terminal one."""

    transport: str
    watchers: int
    count: int
    rate: float
    received: list[Received]
    emit_seconds: float
    server_cpu: float = 0.0
    server_cores: float = 0.0
    server_rss_before: int = 0
    server_rss_extra: int = 0
    envoy_cores: float = 0.0
    client_cores: float = 0.0
    """CPU of this process (the watchers) over the same window: near 1, the client limits."""
    machine_cores: float = 0.0
    """Cores busy on the whole machine (all processes, other users' too) over the window."""
    steal_cores: float = 0.0
    """CPU the hypervisor gave to other machines while ours wanted it."""
    wall: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def expected(self) -> int:
        return self.count + 1

    @property
    def complete(self) -> int:
        """Watchers that got every event, in order, exactly once."""
        return sum(r.complete(self.expected) for r in self.received)

    @property
    def delivered(self) -> int:
        return sum(r.count for r in self.received)

    def latencies(self) -> list[float]:
        return [value for r in self.received for value in r.latencies]

    def throughput(self) -> float:
        """Events per second to the (first) watcher: from the first event's create_time to
        the arrival of the last."""
        r = self.received[0]
        span = r.last_arrival - r.first_create
        return r.count / span if span > 0 and r.count else math.nan

    def summary(self) -> dict[str, Any]:
        errors = sorted({r.error for r in self.received if r.error})
        return {
            "transport": self.transport,
            "watchers": self.watchers,
            "count": self.count,
            "rate": self.rate,
            "complete_watchers": self.complete,
            "delivered": self.delivered,
            "expected": self.expected * self.watchers,
            "errors": errors[:3],
            "emit_seconds": self.emit_seconds,
            "server_cpu_seconds": self.server_cpu,
            "server_cores": self.server_cores,
            "server_rss_before": self.server_rss_before,
            "server_rss_extra": self.server_rss_extra,
            "envoy_cores": self.envoy_cores,
            "client_cores": self.client_cores,
            "machine_cores": self.machine_cores,
            "steal_cores": self.steal_cores,
            "wall": self.wall,
            **latency_summary(self.latencies()),
            **self.extra,
        }


class Rig:
    """The long-lived servers of a run: the executor, the bare server (each behind an Envoy
    of its own, rendered from the same template) and the Socket.IO peer."""

    def __init__(self, workdir: Path, stack: AsyncExitStack, profile_dir: Path | None) -> None:
        self.workdir = workdir
        self.stack = stack
        self.profile_dir = profile_dir
        self.endpoints: dict[str, Endpoint] = {}
        self._fresh = 0

    async def start(self) -> Rig:
        mitosis, bare, sio = await asyncio.gather(
            self.server("mitosis", "rig"),
            self.server("bare", "rig"),
            self.server("socketio", "rig"),
        )
        mitosis_envoy, bare_envoy = await asyncio.gather(
            self.envoy(mitosis, "envoy-mitosis"), self.envoy(bare, "envoy-bare")
        )
        self.endpoints = {
            "mitosis-native": Endpoint(mitosis, "native", mitosis.target),
            "mitosis-web": Endpoint(
                mitosis, "web", f"http://127.0.0.1:{mitosis_envoy.port}", mitosis_envoy
            ),
            "bare-web": Endpoint(bare, "web", f"http://127.0.0.1:{bare_envoy.port}", bare_envoy),
            "bare-native": Endpoint(bare, "native", bare.target),
            "socketio": Endpoint(sio, "socketio", f"http://127.0.0.1:{sio.port}"),
        }
        return self

    async def server(self, kind: str, purpose: str) -> BenchServer:
        self._fresh += 1
        server = await BenchServer(kind, self.workdir / f"{kind}-{purpose}-{self._fresh}").start()
        self.stack.push_async_callback(server.stop)
        if self.profile_dir is not None and kind == "mitosis":
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            server.profile(self.profile_dir / f"executor-{purpose}-{self._fresh}.speedscope.json")
        return server

    async def envoy(self, server: BenchServer, name: str) -> Envoy:
        self._fresh += 1
        envoy = await Envoy(server.port, self.workdir / f"{name}-{self._fresh}").start()
        self.stack.push_async_callback(envoy.stop)
        return envoy

    @contextlib.asynccontextmanager
    async def fresh_mitosis(self, kind: str, purpose: str) -> AsyncIterator[Endpoint]:
        """A new executor (and Envoy for "web"), so its memory is measured from a clean start."""
        self._fresh += 1
        purpose = f"{purpose}-{self._fresh}"
        async with AsyncExitStack() as stack:
            server = await BenchServer("mitosis", self.workdir / f"mitosis-{purpose}").start()
            stack.push_async_callback(server.stop)
            if self.profile_dir is not None:
                server.profile(self.profile_dir / f"executor-{purpose}.speedscope.json")
            if kind == "web":
                envoy = await Envoy(server.port, self.workdir / f"envoy-{purpose}").start()
                stack.push_async_callback(envoy.stop)
                yield Endpoint(server, "web", f"http://127.0.0.1:{envoy.port}", envoy)
            else:
                yield Endpoint(server, "native", server.target)


async def run_stream(
    rig: Rig,
    transport: str,
    endpoint: Endpoint,
    *,
    watchers: int,
    count: int,
    rate: float,
    keep_latencies: bool = True,
    within: float | None = None,
) -> StreamRun:
    """Start the watchers on a new stream, wait until the server has them all, then emit.

    The server's memory is read before the watchers connect, its CPU over the emission and
    delivery; every watcher reads to the terminal event.
    """
    server = endpoint.server
    task_id = (await server.call("new"))["task_id"]
    timeout = within or (count / rate if rate else count / 2000) + 60
    usage = Usage(server.pid)
    envoy_usage = Usage(endpoint.envoy.pid) if endpoint.envoy is not None else None
    received = [Received(keep_latencies=keep_latencies) for _ in range(watchers)]
    async with AsyncExitStack() as stack:
        jobs = await _start_watchers(stack, rig, endpoint, task_id, received, timeout)
        got = (await server.call("wait", task_id=task_id, watchers=watchers, timeout=60))[
            "watchers"
        ]
        if got < watchers:
            for job in jobs:
                job.cancel()
            raise RuntimeError(f"{transport}: only {got} of {watchers} watchers subscribed")
        usage.start()
        if envoy_usage is not None:
            envoy_usage.start()
        started = time.perf_counter()
        client_cpu = time.process_time()
        machine = Machine()
        emitted = await server.call("emit", task_id=task_id, count=count, rate=rate, finish=True)
        await asyncio.wait(jobs, timeout=timeout)
        wall = time.perf_counter() - started
        client_cpu = time.process_time() - client_cpu
        machine.stop()
        await usage.stop()
        if envoy_usage is not None:
            await envoy_usage.stop()
        for job in jobs:
            if not job.done():
                job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
    for r in received:
        if not r.finished and not r.error:
            r.error = "timed out"
    return StreamRun(
        transport=transport,
        watchers=watchers,
        count=count,
        rate=rate,
        received=received,
        emit_seconds=float(emitted["elapsed"]),
        server_cpu=usage.cpu,
        server_cores=usage.cores,
        server_rss_before=usage.rss_before,
        server_rss_extra=usage.rss_extra,
        envoy_cores=envoy_usage.cores if envoy_usage is not None else 0.0,
        client_cores=client_cpu / wall if wall > 0 else 0.0,
        machine_cores=machine.cores,
        steal_cores=machine.steal,
        wall=wall,
    )


async def _start_watchers(
    stack: AsyncExitStack,
    rig: Rig,
    endpoint: Endpoint,
    task_id: str,
    received: list[Received],
    within: float,
) -> list[asyncio.Task[Received]]:
    jobs: list[asyncio.Task[Received]] = []
    if endpoint.kind == "native":
        channels: list[grpc.aio.Channel] = []
        for i, r in enumerate(received):
            if i % WATCHERS_PER_CHANNEL == 0:
                channel = native_channel(endpoint.url)
                stack.push_async_callback(channel.close, None)
                channels.append(channel)
            jobs.append(asyncio.create_task(watch_native(channels[-1], task_id, r, within)))
    elif endpoint.kind == "web":
        for r in received:
            jobs.append(asyncio.create_task(watch_grpc_web(endpoint.url, task_id, r, within)))
    else:
        sockets = [SocketIOWatcher(endpoint.url, task_id, r) for r in received]
        await asyncio.gather(*(s.connect() for s in sockets))
        jobs = [asyncio.create_task(s.run(within)) for s in sockets]
    return jobs


Progress = Callable[[str], None]
