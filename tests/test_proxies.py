"""The proxy matrix: real proxies, configured as people write them, in front of a real Envoy.

Each row of `tests/support/proxies.py` runs as a real process on a free port before one
Envoy over one executor (shared by the whole module). Through each: the UI loads; a
WatchTask is live (the task waits for our approval, and we only see that it waits through
the proxy), outlives the proxy's read timeout on heartbeats, and delivers every event once;
a resume from `after_seq` gives every later event once. Rows that carry HTTP/2 do all of it
in native gRPC. A proxy that buffers whole responses (mitmproxy) delivers a plain watch only
when the task ends. The lag of each event (arrival minus `create_time`) is written to
test-artifacts/proxy-lag.json, never asserted: speed is for docs/DEPLOYING.md.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from google.protobuf import duration_pb2, message

from mitosis.gateway import DEFAULT_STATIC_DIR
from mitosis.v1 import task_pb2, task_service_pb2

from .gateway import Gateway, start_gateway
from .support.grpc_web import (
    SERVICE,
    Arrival,
    WatchStream,
    fetch,
    grpc_web_call,
    is_end,
    is_heartbeat,
    open_grpc_web_watch,
    open_native_watch,
    whole_watch_call,
)
from .support.processes import Service, start_executor, start_planner
from .support.proxies import READ_TIMEOUT_S, SETUPS, Proxy, ProxySetup, program_path, start_proxy

ROOT = Path(__file__).resolve().parent.parent
LAG_REPORT = ROOT / "test-artifacts" / "proxy-lag.json"
PACE_S = 0.01
"""The offline model's pause between pieces of a document: a task lasts a few seconds."""
HEARTBEAT_S = 0.5
"""The executor's heartbeat interval, well under the proxies' read timeout."""
MAX_WAIT_S = 1.0
"""How long a bounded WatchTask response may stay open after its first event."""
AWAITING_APPROVAL = task_pb2.Task.STATE_AWAITING_APPROVAL
SUCCEEDED = task_pb2.Task.STATE_SUCCEEDED
Reply = TypeVar("Reply", bound=message.Message)

STREAMING = [name for name, setup in SETUPS.items() if not setup.buffers_whole_responses]
BROWSER_PATHS = [name for name, setup in SETUPS.items() if not setup.native_grpc]
BUFFERING = [name for name, setup in SETUPS.items() if setup.buffers_whole_responses]


@dataclass
class Stack:
    """A planner, an executor and Envoy in front of it, as subprocesses."""

    planner: Service
    executor: Service
    gateway: Gateway


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One executor (paced, quick heartbeats) behind Envoy, serving the built UI."""
    if not (DEFAULT_STATIC_DIR / "index.html").exists():
        pytest.fail(f"the UI is not built: run `make web` (no {DEFAULT_STATIC_DIR}/index.html)")
    folder = tmp_path_factory.mktemp("stack")
    planner = start_planner(folder)
    executor = start_executor(folder, planner, pace=PACE_S, heartbeat=HEARTBEAT_S)
    try:
        with start_gateway(folder, executor.port, DEFAULT_STATIC_DIR) as gateway:
            yield Stack(planner, executor, gateway)
    finally:
        executor.stop()
        planner.stop()


@pytest.fixture(scope="module")
def proxy(
    request: pytest.FixtureRequest, stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    """The matrix row named by the test's parameter, running in front of the stack's Envoy."""
    setup: ProxySetup = SETUPS[request.param]
    if program_path(setup.program) is None:
        pytest.skip(f"{setup.program} is not installed (`python3 scripts/prereqs.py test`)")
    with start_proxy(setup, stack.gateway.port, tmp_path_factory.mktemp(setup.name)) as started:
        yield started


def call(proxy: Proxy, method: str, request: message.Message, reply: type[Reply]) -> Reply:
    """A unary call through the proxy: gRPC-Web, or native gRPC where the proxy carries h2."""
    if proxy.setup.native_grpc:
        with grpc.insecure_channel(proxy.target) as channel:
            answer: Reply = channel.unary_unary(
                f"{SERVICE}/{method}",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=reply.FromString,
            )(request, timeout=30)
            return answer
    status, headers, messages, trailers = grpc_web_call(proxy.port, method, request)
    grpc_status = headers.get("grpc-status") or trailers.get("grpc-status")
    assert (status, grpc_status, len(messages)) == (200, "0", 1), (headers, trailers)
    return reply.FromString(messages[0])


def watch(proxy: Proxy, task_id: str, after_seq: int = 0) -> WatchStream:
    """A WatchTask through the proxy, read as it arrives."""
    request = task_service_pb2.WatchTaskRequest(task_id=task_id, after_seq=after_seq)
    if proxy.setup.native_grpc:
        return open_native_watch(proxy.target, request)
    return open_grpc_web_watch(proxy.port, request)


def create_task(proxy: Proxy, *, require_approval: bool = False) -> str:
    request = task_service_pb2.CreateTaskRequest(
        text="Write a short market brief on home solar batteries",
        require_approval=require_approval,
    )
    return call(proxy, "CreateTask", request, task_pb2.Task).task_id


def stored(arrivals: list[Arrival]) -> list[task_pb2.TaskEvent]:
    """The stored events among the arrivals (heartbeats left out)."""
    return [a.event for a in arrivals if not is_heartbeat(a.event)]


def awaits_approval(arrival: Arrival) -> bool:
    changed = arrival.event.WhichOneof("kind") == "task_state_changed"
    return changed and arrival.event.task_state_changed.state == AWAITING_APPROVAL


def record_lag(row: str, arrivals: list[Arrival]) -> None:
    """Add the row's lag figures (ms) to test-artifacts/proxy-lag.json, and print them."""
    lags = sorted(1000 * a.lag_s for a in arrivals if not is_heartbeat(a.event))
    figures = {
        "events": len(lags),
        "p50_ms": round(statistics.median(lags), 2),
        "p90_ms": round(lags[int(0.9 * (len(lags) - 1))], 2),
        "max_ms": round(lags[-1], 2),
    }
    LAG_REPORT.parent.mkdir(exist_ok=True)
    report = json.loads(LAG_REPORT.read_text()) if LAG_REPORT.exists() else {}
    report[row] = figures
    LAG_REPORT.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(f"lag through {row}: {figures}")


def is_quiet_past(since: float, seconds: float) -> Callable[[Arrival], bool]:
    """True for the first arrival more than `seconds` after `since`."""
    return lambda arrival: arrival.at - since > seconds


# --- every path a browser takes --------------------------------------------------------------


@pytest.mark.parametrize("proxy", BROWSER_PATHS, indirect=True)
def test_the_ui_loads_through_the_proxy(proxy: Proxy, stack: Stack) -> None:
    status, headers, body = fetch(proxy.port, "GET", "/")

    assert status == 200, body[:300]
    assert headers["content-type"].startswith("text/html")
    # The app's index.html as Envoy serves it (read when it started; `make web` may rebuild).
    assert body == fetch(stack.gateway.port, "GET", "/")[2]
    assert body.lower().startswith(b"<!doctype html>")


# --- live streams ----------------------------------------------------------------------------


@pytest.mark.parametrize("proxy", STREAMING, indirect=True)
def test_a_watch_is_live_through_the_proxy_and_outlives_its_read_timeout(proxy: Proxy) -> None:
    task_id = create_task(proxy, require_approval=True)
    stream = watch(proxy, task_id)
    try:
        # The task waits for us: its plan only reaches us if the proxy passes it on at once.
        planned = stream.until(awaits_approval, timeout_s=20)
        idle = stream.until(is_quiet_past(planned[-1].at, READ_TIMEOUT_S + 1), timeout_s=20)
        call(
            proxy,
            "ApprovePlan",
            task_service_pb2.ApprovePlanRequest(task_id=task_id),
            task_pb2.Task,
        )
        ran = stream.rest(timeout_s=60)
    finally:
        stream.close()

    assert stream.end is not None
    assert (stream.end.grpc_status, stream.end.error) == ("0", None)
    assert all(is_heartbeat(a.event) for a in idle)
    events = stored(planned + idle + ran)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].task_state_changed.state == SUCCEEDED
    # Live: the run's first event reaches us before its last one is even created.
    first, end = stored(ran)[0], events[-1]
    assert next(a.at for a in ran if a.event is first) < end.create_time.ToNanoseconds() / 1e9
    record_lag(proxy.setup.name, ran)


@pytest.fixture(scope="module")
def finished_task(stack: Stack) -> tuple[str, list[task_pb2.TaskEvent]]:
    """A task run to the end, and its events as Envoy delivers them."""
    request = task_service_pb2.CreateTaskRequest(text="Write a short brief on heat pumps")
    status, _, messages, _ = grpc_web_call(stack.gateway.port, "CreateTask", request)
    assert status == 200
    task_id = task_pb2.Task.FromString(messages[0]).task_id
    stream = open_grpc_web_watch(
        stack.gateway.port, task_service_pb2.WatchTaskRequest(task_id=task_id)
    )
    events = stored(stream.rest(timeout_s=60))
    assert is_end(events[-1])
    return task_id, events


@pytest.mark.parametrize("proxy", STREAMING, indirect=True)
def test_a_resumed_watch_gives_every_later_event_once(
    proxy: Proxy, finished_task: tuple[str, list[task_pb2.TaskEvent]]
) -> None:
    task_id, events = finished_task
    after_seq = len(events) // 2

    stream = watch(proxy, task_id, after_seq=after_seq)
    resumed = stored(stream.rest(timeout_s=30))

    assert stream.end is not None
    assert (stream.end.grpc_status, stream.end.error) == ("0", None)
    assert resumed == events[after_seq:]


# --- a proxy that buffers whole responses ----------------------------------------------------


@pytest.mark.parametrize("proxy", BUFFERING, indirect=True)
def test_a_unary_call_works_through_a_buffering_proxy(proxy: Proxy) -> None:
    task_id = create_task(proxy)

    got = call(proxy, "GetTask", task_service_pb2.GetTaskRequest(task_id=task_id), task_pb2.Task)

    assert got.task_id == task_id


@pytest.mark.parametrize("proxy", BUFFERING, indirect=True)
def test_a_plain_watch_through_a_buffering_proxy_arrives_only_when_the_task_ends(
    proxy: Proxy,
) -> None:
    task_id = create_task(proxy)

    stream = watch(proxy, task_id)
    arrivals = stream.rest(timeout_s=60)

    events = stored(arrivals)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert is_end(events[-1])
    end_created = events[-1].create_time.ToNanoseconds() / 1e9
    assert all(a.at >= end_created for a in arrivals), "the proxy passed something on early"
    record_lag(proxy.setup.name, arrivals)


def bounded_watch(
    proxy: Proxy, task_id: str, after_seq: int, done: Callable[[Arrival], bool]
) -> list[list[Arrival]]:
    """Bounded WatchTask calls, each from the last seq seen, until an arrival is `done`."""
    responses: list[list[Arrival]] = []
    max_wait = duration_pb2.Duration()
    max_wait.FromNanoseconds(int(MAX_WAIT_S * 1e9))
    deadline = time.monotonic() + 60
    while not any(done(a) for response in responses for a in response):
        assert time.monotonic() < deadline, "the bounded watch did not get there within 60 s"
        request = task_service_pb2.WatchTaskRequest(
            task_id=task_id, after_seq=after_seq, max_wait=max_wait
        )
        arrivals, grpc_status = whole_watch_call(proxy.port, request)
        assert grpc_status == "0"
        responses.append(arrivals)
        after_seq = max([after_seq, *(e.seq for e in stored(arrivals))])
    return responses


@pytest.mark.parametrize("proxy", BUFFERING, indirect=True)
def test_a_bounded_watch_through_a_buffering_proxy_is_live_and_gives_every_event_once(
    proxy: Proxy,
) -> None:
    task_id = create_task(proxy, require_approval=True)

    # The task waits for us: only a response that ends while it waits can show us that.
    planned = bounded_watch(proxy, task_id, 0, awaits_approval)
    call(proxy, "ApprovePlan", task_service_pb2.ApprovePlanRequest(task_id=task_id), task_pb2.Task)
    seen = max(e.seq for response in planned for e in stored(response))
    ran = bounded_watch(proxy, task_id, seen, lambda a: is_end(a.event))

    events = [e for response in planned + ran for e in stored(response)]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].task_state_changed.state == SUCCEEDED
    # Each response holds at most MAX_WAIT_S of the log (by the server's clock), so the
    # proxy, which delivers it whole, holds no event much longer.
    for response in ran:
        created = [e.create_time.ToNanoseconds() / 1e9 for e in stored(response)]
        assert max(created, default=0) - min(created, default=0) <= MAX_WAIT_S + 0.1
    record_lag(f"{proxy.setup.name} (bounded)", [a for response in ran for a in response])
