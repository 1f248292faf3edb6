"""The gateway: a real Envoy, rendered from envoy/envoy.yaml, in front of the real services.

Native gRPC (h2c) and gRPC-Web (HTTP/1.1) on one port, CORS, streams that outlive Envoy's
default route timeout and its idle timeout, the UI's files, health checks, restarts.
"""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import sys
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from urllib.parse import unquote

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mitosis.client import AsyncClient
from mitosis.executor.server import Executor
from mitosis.gateway import (
    GatewaySettings,
    Verbatim,
    fill_template,
    render_config,
    validate,
    write_config,
)
from mitosis.rpc.auth import MISSING_KEY, UNKNOWN_KEY, key_line
from mitosis.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc
from tests.support.watch import each_event

from . import gateway as harness
from .gateway import ALLOWED_ORIGIN, Gateway, start_gateway, start_gateway_async
from .support.executors import StartExecutor
from .support.grpc_web import SERVICE, fetch, grpc_web_call, grpc_web_frame
from .support.ports import free_port
from .support.processes import BIN
from .support.waiting import eventually
from .support.watch import watch_all

gateway = harness.gateway  # the fixture, as conftest may re-export it
TaskServiceStub = task_service_pb2_grpc.TaskServiceStub
EVIL_ORIGIN = "http://evil.example"
SUCCEEDED = task_pb2.Task.STATE_SUCCEEDED
CANCELLED = task_pb2.Task.STATE_CANCELLED
ROUTE_TIMEOUT_S = 15  # Envoy's default route timeout, which `timeout: 0s` turns off


@pytest.fixture
def gateway_static_dir() -> None:
    """The gateway fixture serves no UI in this module (the static tests make their own)."""
    return


@pytest.fixture
def ui(tmp_path: Path) -> Path:
    """A built UI as Vite lays it out: index.html, hashed assets, a file at the root."""
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text(
        '<!doctype html><script type="module" src="/assets/app-1a2b3c.js"></script>'
    )
    (dist / "assets" / "app-1a2b3c.js").write_text("console.log('mitosis');\n")
    (dist / "assets" / "style-4d5e.css").write_text("body { margin: 0 }\n")
    (dist / "favicon.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (dist / ".secret").write_text("not for the web")
    return dist


@pytest.fixture
async def hanging_planner() -> AsyncIterator[str]:
    """A PlannerService whose calls never answer: a task waits, quiet, in planning."""
    release = asyncio.Event()

    async def hang(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        await release.wait()
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the test is over")
        raise AssertionError("unreachable")

    handler = grpc.method_handlers_generic_handler(
        "mitosis.v1.PlannerService",
        {
            "CreatePlan": grpc.unary_unary_rpc_method_handler(hang),
            "RevisePlan": grpc.unary_unary_rpc_method_handler(hang),
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    release.set()
    await server.stop(None)


def grpc_status(headers: dict[str, str], trailers: dict[str, str]) -> tuple[str, str]:
    """The gRPC status and message of a gRPC-Web answer (trailers-only or not)."""
    status = headers.get("grpc-status") or trailers.get("grpc-status", "")
    return status, unquote(headers.get("grpc-message") or trailers.get("grpc-message", ""))


def assert_gapless_to_the_end(events: list[task_pb2.TaskEvent], state: int = SUCCEEDED) -> None:
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    last = events[-1]
    assert last.WhichOneof("kind") == "task_state_changed"
    assert last.task_state_changed.state == state


def is_heartbeat(event: task_pb2.TaskEvent) -> bool:
    return event.WhichOneof("kind") == "heartbeat"


async def drain(call: AsyncIterable[object]) -> None:
    async for _ in call:
        pass


# --- the configuration ---------------------------------------------------------------------


@pytest.mark.parametrize("executors", [1, 3])
@pytest.mark.parametrize("with_ui", [True, False], ids=["ui", "no-ui"])
def test_envoy_accepts_the_rendered_config(
    tmp_path: Path, ui: Path, executors: int, with_ui: bool
) -> None:
    hosts = [("127.0.0.1", 50051), ("127.0.0.1", 50061), ("localhost", 50071)][:executors]
    settings = GatewaySettings(
        listen_port=18080,
        executors=tuple(hosts),
        static_dir=ui if with_ui else None,
        cors_origins=(ALLOWED_ORIGIN,),
        admin_port=None if with_ui else 0,
    )
    config = write_config(tmp_path / "envoy.yaml", settings)

    result = validate(config)

    assert result.returncode == 0, result.stdout + result.stderr
    text = config.read_text()
    assert text.count('"port_value": 500') == executors
    assert ("STRICT_DNS" in text) == (executors == 3)
    assert ("/assets/app-1a2b3c.js" in text) == with_ui
    assert ".secret" not in text
    assert '[{"exact": "http://localhost:5173"}]' in text


def test_the_command_line_renders_a_config_envoy_accepts(tmp_path: Path, ui: Path) -> None:
    out = tmp_path / "build" / "envoy.yaml"
    arguments = [
        "--listen=127.0.0.1:18081",
        "--executor=127.0.0.1:50051",
        "--executor=127.0.0.1:50061",
        f"--static-dir={ui}",
        f"--cors-origin={ALLOWED_ORIGIN}",
        f"--out={out}",
    ]
    rendered = subprocess.run(
        [sys.executable, "-m", "mitosis.gateway", *arguments],
        capture_output=True,
        text=True,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stderr
    result = validate(out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "port_value: 18081 }" in out.read_text()

    refused = subprocess.run(
        [sys.executable, "-m", "mitosis.gateway", "--cors-origin=*"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2
    assert "CORS origin" in refused.stderr


@pytest.mark.parametrize(
    "overrides",
    [
        {"cors_origins": ("*",)},
        {"cors_origins": ("http://localhost:5173/path",)},
        {"executors": ()},
        {"listen_host": "example.com"},
        {"hosts": ("*",)},
        {"listen_port": 70000},
        {"max_request_bytes": 10},
    ],
)
def test_settings_refuse_what_envoy_should_not_be_given(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"."):
        GatewaySettings(**overrides)  # type: ignore[arg-type]


def test_block_placeholders_take_their_column() -> None:
    template = "a:\n  list:\n  - first\n  ${static_routes}\nb: ${admin}\n"
    values: dict[str, object] = {"static_routes": [{"x": 1}, {"y": "$z"}], "admin": Verbatim("c")}
    assert fill_template(template, values) == (
        'a:\n  list:\n  - first\n  - {"x": 1}\n  - {"y": "$z"}\nb: c\n'
    )
    assert "timeout: 0s" in render_config(cors_origins=[ALLOWED_ORIGIN])


# --- native gRPC (h2c) through Envoy ---------------------------------------------------------


async def test_native_grpc_through_envoy_watches_a_task_gaplessly(
    gateway: Gateway, executor: Executor
) -> None:
    async with (
        grpc.aio.insecure_channel(gateway.target) as through_envoy,
        grpc.aio.insecure_channel(f"127.0.0.1:{executor.port}") as direct,
    ):
        stub = TaskServiceStub(through_envoy)
        task = await stub.CreateTask(task_service_pb2.CreateTaskRequest(text="Write a haiku"))
        events = await watch_all(stub, task.task_id)
        assert_gapless_to_the_end(events)
        assert events == await watch_all(TaskServiceStub(direct), task.task_id)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.GetTask(task_service_pb2.GetTaskRequest(task_id="no-such-task"))
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_the_cli_runs_a_task_through_envoy(gateway: Gateway, tmp_path: Path) -> None:
    cli = await asyncio.create_subprocess_exec(
        str(BIN / "mitosis"),
        "--target",
        gateway.target,
        "--json",
        "run",
        "Write a short guide to tea",
        "--out",
        str(tmp_path / "out"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(90):
        out, err = await cli.communicate()

    assert cli.returncode == 0, err.decode()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    seqs = [int(line["seq"]) for line in lines if "seq" in line and "heartbeat" not in line]
    assert seqs == list(range(1, len(seqs) + 1))
    assert list((tmp_path / "out").iterdir())


# --- gRPC-Web (HTTP/1.1) and CORS --------------------------------------------------------------


async def test_a_grpc_web_error_carries_its_status_and_cors_headers(gateway: Gateway) -> None:
    request = task_service_pb2.GetTaskRequest(task_id="no-such-task")

    status, headers, messages, trailers = await asyncio.to_thread(
        grpc_web_call, gateway.port, "GetTask", request, ALLOWED_ORIGIN
    )

    assert status == 200
    assert messages == []
    assert (headers.get("grpc-status") or trailers.get("grpc-status")) == "5"  # NOT_FOUND
    assert "does not exist" in (headers.get("grpc-message") or trailers.get("grpc-message", ""))
    assert headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    exposed = {h.strip() for h in headers["access-control-expose-headers"].split(",")}
    assert {"grpc-status", "grpc-message", "grpc-status-details-bin"} <= exposed

    _, evil_headers, _, _ = await asyncio.to_thread(
        grpc_web_call, gateway.port, "GetTask", request, EVIL_ORIGIN
    )
    assert "access-control-allow-origin" not in evil_headers


async def test_cors_preflight_allows_listed_origins_only(gateway: Gateway) -> None:
    def preflight(origin: str) -> tuple[int, dict[str, str], bytes]:
        return fetch(
            gateway.port,
            "OPTIONS",
            f"{SERVICE}/WatchTask",
            headers={
                "origin": origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": (
                    "authorization,content-type,x-grpc-web,x-user-agent"
                ),
            },
        )

    status, headers, _ = await asyncio.to_thread(preflight, ALLOWED_ORIGIN)
    assert status == 200
    assert headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "POST" in headers["access-control-allow-methods"]
    allowed = {h.strip() for h in headers["access-control-allow-headers"].split(",")}
    assert {"content-type", "x-grpc-web", "x-user-agent", "grpc-timeout", "authorization"} <= (
        allowed
    )

    _, evil_headers, _ = await asyncio.to_thread(preflight, EVIL_ORIGIN)
    assert "access-control-allow-origin" not in evil_headers


async def test_a_grpc_web_server_stream_delivers_every_event_and_ok(gateway: Gateway) -> None:
    async with grpc.aio.insecure_channel(gateway.target) as channel:
        task = await TaskServiceStub(channel).CreateTask(
            task_service_pb2.CreateTaskRequest(text="Write a haiku")
        )
    request = task_service_pb2.WatchTaskRequest(task_id=task.task_id)

    status, headers, messages, trailers = await asyncio.to_thread(
        grpc_web_call, gateway.port, "WatchTask", request, gateway.url
    )

    assert status == 200
    assert headers["content-type"].startswith("application/grpc-web")
    events = [e for m in messages for e in task_service_pb2.WatchTaskResponse.FromString(m).events]
    assert_gapless_to_the_end([e for e in events if not is_heartbeat(e)])
    assert trailers["grpc-status"] == "0"


# --- API keys through the gateway ---------------------------------------------------------

API_KEY = "mk_gateway-test-key-00000000000000000000000000"


async def test_the_authorization_header_reaches_the_executor_over_grpc_web_and_grpc(
    tmp_path: Path, start_executor_on: StartExecutor
) -> None:
    keys = tmp_path / "api-keys"
    keys.write_text(key_line("gateway-test", API_KEY) + "\n")
    executor = await start_executor_on(f"--api-keys={keys}")
    gateway = await start_gateway_async(tmp_path, executor.port, None)
    bearer = {"authorization": f"Bearer {API_KEY}"}
    listing = task_service_pb2.ListTasksRequest()
    try:
        _, headers, _, trailers = await asyncio.to_thread(
            grpc_web_call, gateway.port, "ListTasks", listing, ALLOWED_ORIGIN
        )
        assert grpc_status(headers, trailers) == ("16", MISSING_KEY)  # UNAUTHENTICATED
        assert headers["access-control-allow-origin"] == ALLOWED_ORIGIN

        status, headers, messages, trailers = await asyncio.to_thread(
            functools.partial(grpc_web_call, headers=bearer),
            gateway.port,
            "ListTasks",
            listing,
            ALLOWED_ORIGIN,
        )
        assert (status, grpc_status(headers, trailers)) == (200, ("0", ""))
        assert len(messages) == 1

        async with grpc.aio.insecure_channel(gateway.target) as channel:
            stub = TaskServiceStub(channel)
            await stub.ListTasks(listing, metadata=tuple(bearer.items()))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ListTasks(listing, metadata=(("authorization", "Bearer mk_nope"),))
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert refused.value.details() == UNKNOWN_KEY
    finally:
        await gateway.astop()


# --- hostile bodies: too large, malformed ---------------------------------------------------


def test_the_request_limit_is_in_the_rendered_config(tmp_path: Path) -> None:
    settings = GatewaySettings(cors_origins=(ALLOWED_ORIGIN,), max_request_bytes=65536)
    text = settings.render()
    assert "max_request_bytes: 65536" in text
    assert "request too large: the gateway takes at most 65536 bytes" in text
    assert validate(write_config(tmp_path / "envoy.yaml", settings)).returncode == 0


async def test_oversized_and_malformed_requests_get_a_clear_status_and_the_gateway_serves_on(
    gateway: Gateway, executor: Executor
) -> None:
    async with grpc.aio.insecure_channel(gateway.target) as channel:
        stub = TaskServiceStub(channel)
        before = await stub.CreateTask(task_service_pb2.CreateTaskRequest(text="Write a haiku"))

    def call(method: str, body: bytes) -> tuple[str, str]:
        _, headers, messages, trailers = grpc_web_call(gateway.port, method, body)
        assert messages == []
        return grpc_status(headers, trailers)

    too_large = "request too large: the gateway takes at most 2097152 bytes"
    huge = task_service_pb2.CreateTaskRequest(text="x" * (3 << 20)).SerializeToString()
    get = task_service_pb2.GetTaskRequest(task_id=before.task_id).SerializeToString()
    cases = {
        "3 MiB": ("CreateTask", grpc_web_frame(huge), ("8", too_large)),
        "announces 4 GiB": (
            "CreateTask",
            b"\x00\xff\xff\xff\xff" + b"text",
            (
                "3",
                "malformed gRPC request: the frame announces 4294967295 bytes and 4 follow;"
                " one whole message is expected",
            ),
        ),
        "cut short": (
            "GetTask",
            grpc_web_frame(get)[:-3],
            (
                "3",
                f"malformed gRPC request: the frame announces {len(get)} bytes and"
                f" {len(get) - 3} follow; one whole message is expected",
            ),
        ),
        "no body": (
            "GetTask",
            b"",
            ("3", "malformed gRPC request: 0 bytes, not one whole message frame"),
        ),
        "a trailer frame": (
            "GetTask",
            grpc_web_frame(b"grpc-status:0", flags=0x80),
            ("3", "malformed gRPC request: frame flags 128, a message frame has 0"),
        ),
        "two messages": (
            "GetTask",
            grpc_web_frame(get) + grpc_web_frame(get),
            (
                "3",
                f"malformed gRPC request: the frame announces {len(get)} bytes and"
                f" {2 * len(get) + 5} follow; one whole message is expected",
            ),
        ),
    }
    for name, (method, body, expected) in cases.items():
        assert await asyncio.to_thread(call, method, body) == expected, name

    # Native gRPC through the gateway meets the same limit (the client's own is off).
    async with grpc.aio.insecure_channel(gateway.target) as channel:
        stub = TaskServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateTask(task_service_pb2.CreateTaskRequest(text="x" * (8 << 20)))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.value.details() == too_large

        # The gateway and the executor serve on; nothing was created, nothing lost.
        assert_gapless_to_the_end(await watch_all(stub, before.task_id))
        listed = await stub.ListTasks(task_service_pb2.ListTasksRequest())
        assert [t.task_id for t in listed.tasks] == [before.task_id]
    status, headers, messages, trailers = await asyncio.to_thread(
        grpc_web_call,
        gateway.port,
        "GetTask",
        task_service_pb2.GetTaskRequest(task_id=before.task_id),
    )
    assert (status, grpc_status(headers, trailers)) == (200, ("0", ""))
    assert task_pb2.Task.FromString(messages[0]).state == SUCCEEDED


async def test_a_call_that_is_not_grpc_is_refused_at_the_gateway(gateway: Gateway) -> None:
    """A service call whose content type is not gRPC would wait for a message forever."""
    for content_type in ("text/plain", "application/json"):
        status, headers, messages, trailers = await asyncio.to_thread(
            grpc_web_call, gateway.port, "GetTask", b"", headers={"content-type": content_type}
        )
        assert status == 415, content_type
        assert messages == []
        code, message = grpc_status(headers, trailers)
        assert code == "3"
        assert f"not '{content_type}'" in message
    # The check ignores case, as HTTP does: an upper-case gRPC type is checked as gRPC.
    status, headers, _, trailers = await asyncio.to_thread(
        grpc_web_call,
        gateway.port,
        "GetTask",
        b"",
        headers={"content-type": "Application/GRPC-Web+proto"},
    )
    assert grpc_status(headers, trailers) == (
        "3",
        "malformed gRPC request: 0 bytes, not one whole message frame",
    )


async def test_reflection_streams_through_the_gateway(gateway: Gateway) -> None:
    """Reflection is a bidirectional stream: the request buffer and frame check leave it be."""
    async with grpc.aio.insecure_channel(gateway.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        answer = await asyncio.wait_for(call.read(), 10)  # while the request side stays open
        assert isinstance(answer, reflection_pb2.ServerReflectionResponse)
        names = {s.name for s in answer.list_services_response.service}
        assert "mitosis.v1.TaskService" in names
        await call.done_writing()


# --- long and quiet streams -----------------------------------------------------------------


async def test_a_stream_outlives_envoys_default_route_timeout(
    tmp_path: Path, start_executor_on: StartExecutor
) -> None:
    executor = await start_executor_on("--offline-pace=0.13")
    gateway = await start_gateway_async(tmp_path, executor.port, None)
    loop = asyncio.get_running_loop()
    try:
        async with grpc.aio.insecure_channel(gateway.target) as channel:
            stub = TaskServiceStub(channel)
            task = await stub.CreateTask(task_service_pb2.CreateTaskRequest(text="hello"))
            opened = loop.time()
            call = stub.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task.task_id))
            events = [event async for event in each_event(call) if not is_heartbeat(event)]
            lasted = loop.time() - opened
            assert await call.code() == grpc.StatusCode.OK
    finally:
        await gateway.astop()

    assert_gapless_to_the_end(events)
    first, last = events[0].create_time.ToDatetime(), events[-1].create_time.ToDatetime()
    span = (last - first).total_seconds()
    assert span > ROUTE_TIMEOUT_S, f"the task took {span:.1f} s: slow it more to test this"
    assert lasted > ROUTE_TIMEOUT_S


async def test_heartbeats_keep_a_quiet_stream_open_past_the_idle_timeout(
    tmp_path: Path, start_executor_on: StartExecutor, hanging_planner: str
) -> None:
    """A task waiting on its planner says nothing: only heartbeats keep its watch alive."""
    beating = await start_executor_on(f"--planner={hanging_planner}", "--heartbeat-interval=0.5")
    silent = await start_executor_on(
        f"--planner={hanging_planner}", "--heartbeat-interval=60", data_dir=tmp_path / "silent"
    )
    idle_timeout_s = 2
    through_beating = await start_gateway_async(
        tmp_path, beating.port, None, stream_idle_timeout_s=idle_timeout_s
    )
    through_silent = await start_gateway_async(
        tmp_path, silent.port, None, stream_idle_timeout_s=idle_timeout_s
    )
    loop = asyncio.get_running_loop()
    try:
        async with (
            grpc.aio.insecure_channel(through_beating.target) as beating_channel,
            grpc.aio.insecure_channel(through_silent.target) as silent_channel,
        ):
            stub = TaskServiceStub(beating_channel)
            task = await stub.CreateTask(task_service_pb2.CreateTaskRequest(text="hello"))
            call = stub.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task.task_id))
            reader = each_event(call)
            opened = loop.time()
            heartbeats = 0
            while loop.time() - opened < 2.5 * idle_timeout_s:
                event = await asyncio.wait_for(reader.read(), 10)
                assert event is not None, "the stream ended"
                heartbeats += is_heartbeat(event)
            await stub.CancelTask(task_service_pb2.CancelTaskRequest(task_id=task.task_id))
            rest = []
            while (event := await asyncio.wait_for(reader.read(), 10)) is not None:
                rest.append(event)
            assert rest[-1].task_state_changed.state == CANCELLED
            assert await call.code() == grpc.StatusCode.OK
            assert heartbeats >= 4

            # The control: without heartbeats, Envoy resets the same kind of stream.
            silent_stub = TaskServiceStub(silent_channel)
            quiet = await silent_stub.CreateTask(task_service_pb2.CreateTaskRequest(text="hi"))
            silent_call = silent_stub.WatchTask(
                task_service_pb2.WatchTaskRequest(task_id=quiet.task_id)
            )
            with pytest.raises(grpc.aio.AioRpcError):
                await asyncio.wait_for(drain(silent_call), 10 * idle_timeout_s)
            await silent_stub.CancelTask(task_service_pb2.CancelTaskRequest(task_id=quiet.task_id))
    finally:
        await through_beating.astop()
        await through_silent.astop()


# --- the UI's files ---------------------------------------------------------------------------


def test_the_built_ui_is_served_with_types_caching_and_an_app_fallback(
    tmp_path: Path, ui: Path
) -> None:
    index = (ui / "index.html").read_bytes()
    with start_gateway(tmp_path, free_port(), ui) as gateway:
        status, headers, body = fetch(gateway.port, "GET", "/")
        assert (status, body) == (200, index)
        assert headers["content-type"] == "text/html; charset=utf-8"
        assert headers["cache-control"] == "no-cache"
        assert "script-src 'self'" in headers["content-security-policy"]

        status, headers, body = fetch(gateway.port, "GET", "/assets/app-1a2b3c.js")
        assert (status, body) == (200, b"console.log('mitosis');\n")
        assert headers["content-type"].startswith("text/javascript")
        assert "immutable" in headers["cache-control"]
        assert headers["x-content-type-options"] == "nosniff"

        _, headers, _ = fetch(gateway.port, "GET", "/assets/style-4d5e.css")
        assert headers["content-type"].startswith("text/css")
        _, headers, _ = fetch(gateway.port, "GET", "/favicon.svg")
        assert headers["content-type"] == "image/svg+xml"
        assert headers["cache-control"] == "no-cache"

        for page in ["/tasks/abc", "/index.html", "/.secret"]:
            status, headers, body = fetch(gateway.port, "GET", page)
            assert (status, body) == (200, index), page
            assert headers["content-type"] == "text/html; charset=utf-8"

        status, _, body = fetch(gateway.port, "HEAD", "/tasks/abc")
        assert (status, body) == (200, b"")
        assert fetch(gateway.port, "GET", "/assets/gone-0000.js")[0] == 404
        assert fetch(gateway.port, "GET", "/", headers={"host": "rebound.example:80"})[0] == 421
        assert (
            fetch(gateway.port, "GET", "/", headers={"host": f"localhost:{gateway.port}"})[0] == 200
        )


@pytest.mark.parametrize("built", [False, True], ids=["no-static-dir", "no-index-html"])
def test_without_a_built_ui_every_page_says_so(tmp_path: Path, built: bool) -> None:
    static_dir = None
    if built:
        static_dir = tmp_path / "dist"
        (static_dir / "assets").mkdir(parents=True)
    with start_gateway(tmp_path, free_port(), static_dir) as gateway:
        for page in ["/", "/tasks/abc"]:
            status, headers, body = fetch(gateway.port, "GET", page)
            assert status == 503
            assert headers["content-type"] == "text/html; charset=utf-8"
            assert b"not built" in body
            assert b"make run" in body


# --- restarts and health --------------------------------------------------------------------


async def test_a_watch_resumes_exactly_once_across_an_envoy_restart(
    tmp_path: Path, start_executor_on: StartExecutor
) -> None:
    executor = await start_executor_on("--offline-pace=0.03")
    gateway = await start_gateway_async(tmp_path, executor.port, None)
    port = gateway.port
    states: list[str] = []
    events: list[task_pb2.TaskEvent] = []
    seq_at_stop = 0

    async def bounce() -> None:
        nonlocal seq_at_stop
        seq_at_stop = events[-1].seq
        await gateway.astop()
        await asyncio.sleep(1.0)
        await gateway.astart()

    try:
        async with AsyncClient(gateway.target, max_reconnect_wait=0.5) as client:
            task = await client.create_task("hello")
            restart: asyncio.Task[None] | None = None
            async for event in client.watch(task.task_id, on_state=states.append):
                events.append(event)
                if len(events) == 10:
                    restart = asyncio.create_task(bounce())
            assert restart is not None
            await restart
    finally:
        await gateway.astop()

    assert gateway.port == port
    assert any(state.startswith("reconnecting") for state in states), states
    assert 10 <= seq_at_stop < events[-1].seq
    assert_gapless_to_the_end(events)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{executor.port}") as direct:
        assert events == await watch_all(TaskServiceStub(direct), task.task_id)


async def cluster_health(gateway: Gateway) -> dict[int, str]:
    """Envoy's view of each executor's health: port -> health_flags."""
    assert gateway.admin_port is not None
    port = gateway.admin_port
    _, _, body = await asyncio.to_thread(fetch, port, "GET", "/clusters")
    flags: dict[int, str] = {}
    for line in body.decode().splitlines():
        parts = line.split("::")
        if parts[0] == "executors" and len(parts) == 4 and parts[2] == "health_flags":
            flags[int(parts[1].rsplit(":", 1)[1])] = parts[3]
    return flags


async def wait_for_health(gateway: Gateway, port: int, flag: str) -> None:
    async def flagged() -> bool:
        return flag in (await cluster_health(gateway)).get(port, "")

    await eventually(flagged, timeout=15, interval=0.1, what=f"Envoy marks {port} {flag}")


async def test_a_stopped_executor_leaves_the_rotation(
    tmp_path: Path, start_executor_on: StartExecutor
) -> None:
    first = await start_executor_on()
    second = await start_executor_on()
    gateway = await start_gateway_async(tmp_path, [first.port, second.port], None)
    try:
        async with grpc.aio.insecure_channel(gateway.target) as channel:
            stub = TaskServiceStub(channel)
            await first.stop(None)
            for _ in range(10):  # retried on the other executor, never an error
                await stub.ListTasks(task_service_pb2.ListTasksRequest(), timeout=10)
            await wait_for_health(gateway, first.port, "failed_active_hc")
            assert (await cluster_health(gateway))[second.port] == "healthy"
            task = await stub.CreateTask(task_service_pb2.CreateTaskRequest(text="Write a haiku"))
            assert_gapless_to_the_end(await watch_all(stub, task.task_id))
    finally:
        await gateway.astop()


async def test_a_single_executor_failing_health_checks_still_gets_traffic(
    tmp_path: Path, executor: Executor
) -> None:
    gateway = await start_gateway_async(tmp_path, executor.port, None)
    try:
        await executor.serving.health.set(
            "mitosis.v1.TaskService", health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await wait_for_health(gateway, executor.port, "failed_active_hc")
        async with grpc.aio.insecure_channel(gateway.target) as channel:
            stub = TaskServiceStub(channel)
            task = await stub.CreateTask(task_service_pb2.CreateTaskRequest(text="Write a haiku"))
            assert_gapless_to_the_end(await watch_all(stub, task.task_id))
    finally:
        await gateway.astop()
