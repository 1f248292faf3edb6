"""JSON over HTTP through the gateway: Envoy's gRPC-JSON transcoder in front of real executors.

Plain HTTP/1.1 clients (http.client, as curl would) create, get, list and cancel tasks with
JSON under /v1/; WatchTask comes as Server-Sent Events, every event once and in order, and
resumes from `after_seq`; API keys, CORS and error statuses work as for gRPC-Web. Each
response body is read into the proto message it stands for (json_format), so a field the
protos do not have fails the test.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import grpc
import pytest
from google.protobuf import json_format

from mitosis.executor.server import Executor
from mitosis.rpc.auth import MISSING_KEY, UNKNOWN_KEY, key_line
from mitosis.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc

from . import gateway as harness
from .gateway import ALLOWED_ORIGIN, Gateway, start_gateway_async
from .support.executors import StartExecutor
from .support.grpc_web import is_end, is_heartbeat
from .support.proxies import SETUPS, program_path, start_proxy
from .support.watch import watch_all

gateway = harness.gateway  # the fixture
Task = task_pb2.Task
EVIL_ORIGIN = "http://evil.example"
API_KEY = "mk_http-json-test-key-000000000000000000000000"
JSON = {"content-type": "application/json"}
BROWSER_PROXIES = [
    name
    for name, setup in SETUPS.items()
    if not setup.native_grpc and not setup.buffers_whole_responses
]
"""The proxy matrix's rows that pass HTTP/1.1 streams on (tests/test_proxies.py)."""


@pytest.fixture
def gateway_static_dir() -> None:
    """No UI: these tests are about the API."""


def request(
    port: int,
    method: str,
    path: str,
    body: object = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request with an optional JSON body: status, lower-cased headers, body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        data = None if body is None else json.dumps(body).encode()
        sent = {**(JSON if data is not None else {}), **(headers or {})}
        connection.request(method, path, body=data, headers=sent)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


async def call(
    port: int, method: str, path: str, body: object = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """`request` in a thread: the executors serve on this test's event loop."""
    return await asyncio.to_thread(request, port, method, path, body, headers)


def task_from(body: bytes) -> task_pb2.Task:
    return json_format.Parse(body, Task())


def error_from(body: bytes) -> tuple[int, str]:
    """The gRPC code and message of a google.rpc.Status JSON body."""
    status = json.loads(body)
    return status["code"], status.get("message", "")


def sse_events(response: http.client.HTTPResponse) -> Iterator[tuple[str, str]]:
    """Each Server-Sent Event as it arrives, as an EventSource sees it (the WHATWG
    event-stream format): the last event id so far, and the event's data."""
    last_id, lines = "", []
    while raw := response.readline():
        line = raw.decode().rstrip("\r\n")
        if not line:
            if lines:
                yield last_id, "\n".join(lines)
            lines = []
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            lines.append(value)
        elif name == "id":
            last_id = value
        # Other fields (event:, retry:) and comments (":...") carry nothing we read.


def sse_data(response: http.client.HTTPResponse) -> Iterator[str]:
    """The data of each Server-Sent Event as it arrives."""
    return (data for _, data in sse_events(response))


def watch_sse(
    port: int,
    task_id: str,
    query: str = "",
    *,
    headers: dict[str, str] | None = None,
    until: Callable[[task_pb2.TaskEvent], bool] | None = None,
) -> tuple[int, dict[str, str], list[task_pb2.TaskEvent]]:
    """GET the task's :watch as an EventSource would: status, headers, stored events in
    arrival order (heartbeats left out). With `until`, hang up after the message holding
    the first event it accepts."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(
            "GET",
            f"/v1/tasks/{task_id}:watch{query}",
            headers={"accept": "text/event-stream", **(headers or {})},
        )
        response = connection.getresponse()
        found = {k.lower(): v for k, v in response.getheaders()}
        if response.status != 200:
            return response.status, found, []
        events: list[task_pb2.TaskEvent] = []
        for last_id, data in sse_events(response):
            message = json_format.Parse(data, task_service_pb2.WatchTaskResponse())
            # Each event's id is the newest seq it carries: what EventSource resumes from.
            assert last_id == str(message.events[-1].seq)
            events += [e for e in message.events if not is_heartbeat(e)]
            if until is not None and any(until(e) for e in message.events):
                break
        return response.status, found, events
    finally:
        connection.close()


async def sse(
    port: int,
    task_id: str,
    query: str = "",
    *,
    headers: dict[str, str] | None = None,
    until: Callable[[task_pb2.TaskEvent], bool] | None = None,
) -> tuple[int, dict[str, str], list[task_pb2.TaskEvent]]:
    """`watch_sse` in a thread."""
    return await asyncio.to_thread(
        lambda: watch_sse(port, task_id, query, headers=headers, until=until)
    )


def waits_for_approval(event: task_pb2.TaskEvent) -> bool:
    return (
        event.WhichOneof("kind") == "task_state_changed"
        and event.task_state_changed.state == Task.STATE_AWAITING_APPROVAL
    )


async def stored_events(executor: Executor, task_id: str) -> list[task_pb2.TaskEvent]:
    """The task's whole log as a native gRPC watch gets it from the executor."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{executor.port}") as channel:
        return await watch_all(task_service_pb2_grpc.TaskServiceStub(channel), task_id)


async def create(port: int, text: str, **fields: object) -> task_pb2.Task:
    status, headers, body = await call(port, "POST", "/v1/tasks", {"text": text, **fields})
    assert status == 200, body
    assert headers["content-type"].startswith("application/json")
    return task_from(body)


# --- unary calls ------------------------------------------------------------------------------


async def test_a_task_is_created_got_listed_and_cancelled_with_json(gateway: Gateway) -> None:
    port = gateway.port
    task = await create(port, "Write a haiku about tides", requireApproval=True)
    assert task.task_id
    assert task.text == "Write a haiku about tides"

    status, _, body = await call(port, "GET", f"/v1/tasks/{task.task_id}")
    assert status == 200
    assert task_from(body).task_id == task.task_id

    status, _, body = await call(port, "GET", "/v1/tasks?page_size=10&view=VIEW_FULL")
    assert status == 200
    listed = json_format.Parse(body, task_service_pb2.ListTasksResponse())
    assert [t.task_id for t in listed.tasks] == [task.task_id]

    status, _, body = await call(port, "POST", f"/v1/tasks/{task.task_id}:cancel", {})
    assert status == 200, body
    assert task_from(body).state == Task.STATE_CANCELLED

    # Refusals keep their gRPC meaning: FAILED_PRECONDITION is 400, NOT_FOUND 404.
    status, headers, body = await call(port, "POST", f"/v1/tasks/{task.task_id}:cancel", {})
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    assert error_from(body)[0] == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    status, _, body = await call(port, "GET", "/v1/tasks/no-such-task")
    assert status == 404
    assert error_from(body)[0] == grpc.StatusCode.NOT_FOUND.value[0]


async def test_requests_the_rules_cannot_take_are_refused_in_json(gateway: Gateway) -> None:
    port = gateway.port
    invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    # A misspelt parameter is refused, never ignored: ?after_sq=3 would replay everything.
    status, headers, body = await call(port, "GET", "/v1/tasks/x:watch?after_sq=3")
    assert (status, headers["content-type"]) == (400, "application/json"), body
    code, message = error_from(body)
    assert (code, "after_sq" in message) == (invalid, True)

    status, headers, body = await call(port, "POST", "/v1/tasks", {"text": 3})
    assert (status, headers["content-type"]) == (400, "application/json"), body
    assert error_from(body)[0] == invalid

    status, headers, body = await call(port, "GET", "/v1/no-such-collection")
    assert (status, headers["content-type"]) == (404, "application/json"), body
    assert error_from(body)[0] == grpc.StatusCode.NOT_FOUND.value[0]


# --- WatchTask as Server-Sent Events ---------------------------------------------------------


async def test_a_watch_streams_every_event_once_in_order_as_server_sent_events(
    gateway: Gateway, executor: Executor
) -> None:
    task = await create(gateway.port, "Write a short guide to composting")

    status, headers, events = await sse(gateway.port, task.task_id)

    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["x-accel-buffering"] == "no"  # nginx passes it on as it comes
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert is_end(events[-1])
    assert events[-1].task_state_changed.state == Task.STATE_SUCCEEDED
    assert events == await stored_events(executor, task.task_id)


async def test_a_watch_resumed_with_after_seq_gets_exactly_the_rest(
    gateway: Gateway, executor: Executor
) -> None:
    port = gateway.port
    task = await create(port, "Write a short guide to composting", requireApproval=True)
    # Live, to the middle of the task: it waits for approval; the client hangs up there.
    _, _, first = await sse(port, task.task_id, until=waits_for_approval)
    assert waits_for_approval(first[-1])

    status, _, body = await call(port, "POST", f"/v1/tasks/{task.task_id}:approve", {})
    assert status == 200, body
    status, _, rest = await sse(port, task.task_id, f"?after_seq={first[-1].seq}")

    assert status == 200
    assert [e.seq for e in rest] == list(range(first[-1].seq + 1, rest[-1].seq + 1))
    assert is_end(rest[-1])
    assert first + rest == await stored_events(executor, task.task_id)


async def test_an_event_source_resumes_from_its_last_event_id(
    gateway: Gateway, executor: Executor
) -> None:
    """EventSource resends the last `id:` it saw as Last-Event-ID, to the same URL."""
    port = gateway.port
    task = await create(port, "Write a short guide to composting", requireApproval=True)
    _, _, first = await sse(port, task.task_id, "?after_seq=0", until=waits_for_approval)
    status, _, body = await call(port, "POST", f"/v1/tasks/{task.task_id}:approve", {})
    assert status == 200, body

    last_id = {"last-event-id": str(first[-1].seq)}
    status, _, rest = await sse(port, task.task_id, "?after_seq=0", headers=last_id)

    assert status == 200
    assert first + rest == await stored_events(executor, task.task_id)


async def test_a_bounded_watch_ends_while_the_task_goes_on(gateway: Gateway) -> None:
    """`max_wait` (a Duration, "0.5s") as for a path that delivers only whole responses."""
    port = gateway.port
    task = await create(port, "Write a short guide to composting", requireApproval=True)
    _, _, before = await sse(port, task.task_id, until=waits_for_approval)

    status, _, events = await sse(port, task.task_id, "?max_wait=0.5s")

    assert status == 200  # it ended by itself, the task still waiting for approval
    assert events == before


async def test_a_watch_error_before_the_first_event_is_an_http_status(gateway: Gateway) -> None:
    status, headers, _ = await sse(gateway.port, "no-such-task")
    assert status == 404
    assert headers["content-type"].startswith("application/json")

    task = await create(gateway.port, "Write a haiku")
    status, _, _ = await sse(gateway.port, task.task_id, "?after_seq=1000000")
    assert status == 400  # OUT_OF_RANGE


def read_sse(port: int, path: str) -> tuple[int, list[str]]:
    """GET a server stream: its status and the data of each event, to the end."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", path, headers={"accept": "text/event-stream"})
        response = connection.getresponse()
        return response.status, list(sse_data(response))
    finally:
        connection.close()


async def test_an_artifact_is_read_as_events_of_base64_chunks(gateway: Gateway) -> None:
    task = await create(gateway.port, "Write a haiku about the sea")
    _, _, events = await sse(gateway.port, task.task_id)
    assert is_end(events[-1])
    _, _, body = await call(gateway.port, "GET", f"/v1/tasks/{task.task_id}")
    artifact = task_from(body).artifacts[0]

    status, chunks = await asyncio.to_thread(
        read_sse, gateway.port, f"/v1/tasks/{task.task_id}/artifacts/{quote(artifact.path)}"
    )

    assert status == 200
    data = b"".join(
        json_format.Parse(c, task_service_pb2.ReadArtifactResponse()).data for c in chunks
    )
    assert hashlib.sha256(data).hexdigest() == artifact.sha256


@pytest.mark.parametrize("name", BROWSER_PROXIES)
async def test_server_sent_events_are_live_through_the_proxies_people_use(
    gateway: Gateway, tmp_path: Path, name: str
) -> None:
    """The task waits for approval: its stream stays open, and that it waits can only be
    seen through a proxy that passes each event on as it comes."""
    setup = SETUPS[name]
    if program_path(setup.program) is None:
        pytest.skip(f"{setup.program} is not installed (`python3 scripts/prereqs.py test`)")
    with await asyncio.to_thread(start_proxy, setup, gateway.port, tmp_path / name) as proxy:
        task = await create(proxy.port, "Write a short guide to composting", requireApproval=True)
        status, headers, events = await sse(proxy.port, task.task_id, until=waits_for_approval)

    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert waits_for_approval(events[-1])


# --- API keys and CORS -----------------------------------------------------------------------


async def test_an_executor_with_keys_wants_one_over_http_too(
    tmp_path: Path, start_executor_on: StartExecutor
) -> None:
    keys = tmp_path / "api-keys"
    keys.write_text(key_line("http-json-test", API_KEY) + "\n")
    executor = await start_executor_on(f"--api-keys={keys}")
    gateway = await start_gateway_async(tmp_path, executor.port, None)
    bearer = {"authorization": f"Bearer {API_KEY}"}
    try:
        status, headers, body = await call(gateway.port, "GET", "/v1/tasks")
        assert status == 401, (headers, body)
        assert error_from(body) == (grpc.StatusCode.UNAUTHENTICATED.value[0], MISSING_KEY), (
            headers,
            body,
        )
        # The error's details travel as JSON too: clients can act on the reason.
        assert json.loads(body)["details"][0]["reason"] == "API_KEY_MISSING"
        status, _, body = await call(
            gateway.port, "GET", "/v1/tasks", headers={"authorization": "Bearer mk_nope"}
        )
        assert (status, error_from(body)[1]) == (401, UNKNOWN_KEY)

        task = await create_with(gateway.port, bearer)
        status, _, _ = await sse(gateway.port, task.task_id)
        assert status == 401
        status, _, events = await sse(gateway.port, task.task_id, headers=bearer)
        assert status == 200
        assert is_end(events[-1])
    finally:
        await gateway.astop()


async def create_with(port: int, headers: dict[str, str]) -> task_pb2.Task:
    status, _, body = await call(port, "POST", "/v1/tasks", {"text": "Write a haiku"}, headers)
    assert status == 200, body
    return task_from(body)


async def test_cors_lets_listed_origins_call_the_json_api(gateway: Gateway) -> None:
    def preflight(origin: str) -> tuple[int, dict[str, str], bytes]:
        return request(
            gateway.port,
            "OPTIONS",
            "/v1/tasks",
            headers={
                "origin": origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization,content-type",
            },
        )

    status, headers, _ = await asyncio.to_thread(preflight, ALLOWED_ORIGIN)
    assert status == 200
    assert headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    allowed = {h.strip() for h in headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed
    _, evil, _ = await asyncio.to_thread(preflight, EVIL_ORIGIN)
    assert "access-control-allow-origin" not in evil

    status, headers, _ = await call(
        gateway.port, "GET", "/v1/tasks", headers={"origin": ALLOWED_ORIGIN}
    )
    assert status == 200
    assert headers["access-control-allow-origin"] == ALLOWED_ORIGIN
