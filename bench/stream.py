"""Workloads 1-4 on one task's stream: latency, throughput, fan-out, catch-up."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from bench.clients import Received, native_channel, watch_grpc_web, watch_native
from bench.rig import TRANSPORTS, Progress, Rig, run_stream


@dataclass(frozen=True)
class StreamPlan:
    """How much of each stream workload to run."""

    reps: int
    latency_rates: tuple[float, ...]
    latency_seconds: float
    throughput_events: int
    fanout_watchers: tuple[int, ...]
    fanout_rate: float
    fanout_seconds: float
    catchup_events: int


def _rotated(items: tuple[str, ...], by: int) -> list[str]:
    """The transports in a different order each repetition, so none always goes first."""
    by %= len(items)
    return list(items[by:] + items[:by])


async def warm_up(rig: Rig, progress: Progress) -> None:
    """One short stream per transport: connections, Envoy's upstream pool, code paths."""
    progress("warming up every transport")
    for transport in TRANSPORTS:
        await run_stream(rig, transport, rig.endpoints[transport], watchers=1, count=300, rate=0)


async def latency(rig: Rig, plan: StreamPlan, progress: Progress) -> list[dict[str, Any]]:
    """Workload 1: create_time → arrival at one watcher, at fixed rates, all transports."""
    rows = []
    for rep in range(plan.reps):
        for rate in plan.latency_rates:
            for transport in _rotated(TRANSPORTS, rep):
                count = int(rate * plan.latency_seconds)
                run = await run_stream(
                    rig, transport, rig.endpoints[transport], watchers=1, count=count, rate=rate
                )
                row = {"workload": "latency", "rep": rep, **run.summary()}
                rows.append(row)
                progress(
                    f"latency {transport} {rate:g}/s rep {rep + 1}: p50 {row['p50_ms']:.2f} ms,"
                    f" p99 {row['p99_ms']:.2f} ms, max {row['max_ms']:.1f} ms"
                )
    return rows


async def throughput(rig: Rig, plan: StreamPlan, progress: Progress) -> list[dict[str, Any]]:
    """Workload 2: append as fast as possible while one watcher reads, all transports.

    Live: the watcher is subscribed before the first event and reads while the server
    appends (every append yields to the server's event loop). Events per second from the
    first event's create_time to the arrival of the last.
    """
    rows = []
    for rep in range(plan.reps):
        for transport in _rotated(TRANSPORTS, rep):
            run = await run_stream(
                rig,
                transport,
                rig.endpoints[transport],
                watchers=1,
                count=plan.throughput_events,
                rate=0,
                keep_latencies=False,
            )
            row = {"workload": "throughput", "rep": rep, **run.summary()}
            row["events_per_s"] = run.throughput()
            row["append_per_s"] = (run.count + 1) / run.emit_seconds if run.emit_seconds else 0
            rows.append(row)
            progress(
                f"throughput {transport} rep {rep + 1}: {row['events_per_s']:,.0f} ev/s"
                f" ({run.complete}/1 complete; cores: server {run.server_cores:.2f},"
                f" Envoy {run.envoy_cores:.2f}, client {run.client_cores:.2f})"
            )
    return rows


async def fanout(rig: Rig, plan: StreamPlan, progress: Progress) -> list[dict[str, Any]]:
    """Workload 3: N watchers on one task at a low rate, native and gRPC-Web through Envoy.

    Each Mitosis configuration gets a freshly started executor, so the memory it adds for
    its watchers is measured from the same clean start every time. From 100 watchers on,
    the bare transport (gRPC-Web through Envoy, the rig's server) runs the same fan-out as
    a baseline: what grpcio itself costs per message sent.
    """
    rows = []
    count = int(plan.fanout_rate * plan.fanout_seconds)
    for rep in range(plan.reps):
        for watchers in sorted(plan.fanout_watchers, reverse=True):
            transports = ["mitosis-native", "mitosis-web"]
            if watchers >= 100:
                transports.append("bare-web")
            for transport in _rotated(tuple(transports), rep):
                if transport == "bare-web":
                    run = await run_stream(
                        rig,
                        transport,
                        rig.endpoints[transport],
                        watchers=watchers,
                        count=count,
                        rate=plan.fanout_rate,
                    )
                else:
                    kind = transport.removeprefix("mitosis-")
                    async with rig.fresh_mitosis(kind, f"fanout-{watchers}-{kind}") as endpoint:
                        # One short stream first, so a cold start is not in the figures.
                        await run_stream(rig, transport, endpoint, watchers=1, count=100, rate=0)
                        run = await run_stream(
                            rig,
                            transport,
                            endpoint,
                            watchers=watchers,
                            count=count,
                            rate=plan.fanout_rate,
                        )
                row = {"workload": "fanout", "rep": rep, **run.summary()}
                per_1000 = 1000 / watchers
                row["server_cores_per_1000"] = run.server_cores * per_1000
                row["server_rss_extra_per_1000"] = run.server_rss_extra * per_1000
                rows.append(row)
                progress(
                    f"fan-out {transport} {watchers} watchers rep {rep + 1}:"
                    f" {run.complete}/{watchers} complete, p50 {row['p50_ms']:.1f} ms,"
                    f" p99 {row['p99_ms']:.1f} ms; cores: server {run.server_cores:.2f},"
                    f" Envoy {run.envoy_cores:.2f}, client {run.client_cores:.2f},"
                    f" machine {run.machine_cores:.2f} (steal {run.steal_cores:.2f});"
                    f" +{run.server_rss_extra / 2**20:.1f} MiB"
                )
    return rows


async def catch_up(rig: Rig, plan: StreamPlan, progress: Progress) -> list[dict[str, Any]]:
    """Workload 4: a finished task of N events replayed from the store to a new watcher."""
    server = rig.endpoints["mitosis-native"].server
    task_id = (await server.call("new"))["task_id"]
    loaded = await server.call("preload", task_id=task_id, count=plan.catchup_events, batch=1000)
    expected = plan.catchup_events + 1
    progress(
        f"catch-up: {expected:,} events stored in {loaded['elapsed']:.1f} s"
        f" ({expected / loaded['elapsed']:,.0f} ev/s in transactions of 1000)"
    )
    rows = []
    for rep in range(plan.reps):
        for transport in (
            ("mitosis-native", "mitosis-web")
            if rep % 2 == 0
            else (
                "mitosis-web",
                "mitosis-native",
            )
        ):
            endpoint = rig.endpoints[transport]
            received = Received(keep_latencies=False)
            started = time.perf_counter()
            if endpoint.kind == "native":
                async with native_channel(endpoint.url) as channel:
                    await watch_native(channel, task_id, received, within=120)
            else:
                await watch_grpc_web(endpoint.url, task_id, received, within=120)
            seconds = time.perf_counter() - started
            rate = received.count / seconds if seconds > 0 else math.nan
            rows.append(
                {
                    "workload": "catchup",
                    "rep": rep,
                    "transport": transport,
                    "events": received.count,
                    "expected": expected,
                    "complete": received.complete(expected),
                    "error": received.error,
                    "seconds": seconds,
                    "events_per_s": rate,
                    "preload_seconds": loaded["elapsed"],
                }
            )
            progress(
                f"catch-up {transport} rep {rep + 1}: {received.count:,} events in"
                f" {seconds:.2f} s = {rate:,.0f} ev/s"
            )
    return rows
