"""gRPC-Web by hand, as a browser sends it, and WatchTask streams read as they arrive.

`grpc_web_call` makes one whole call over HTTP/1.1; `WatchStream` reads a streaming call
in a thread and hands out each event with the wall-clock time it arrived, so a test can act
in the middle of a stream and compare arrival with the event's `create_time`. Every
WatchTask message, gRPC-Web or native, is decoded by `watch_events`.
"""

from __future__ import annotations

import http.client
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf import message

from mitosis.v1 import task_pb2, task_service_pb2

SERVICE = "/mitosis.v1.TaskService"
WATCH_TASK = f"{SERVICE}/WatchTask"
GRPC_WEB_HEADERS = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}


def fetch(
    port: int,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request (blocking): status, lower-cased headers, body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        connection.close()


def grpc_web_frame(data: bytes, flags: int = 0) -> bytes:
    """One gRPC(-Web) frame: flags, big-endian length, data."""
    return bytes([flags]) + struct.pack(">I", len(data)) + data


def grpc_web_call(
    port: int,
    method: str,
    request: message.Message | bytes,
    origin: str | None = None,
    *,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], list[bytes], dict[str, str]]:
    """A gRPC-Web call as a browser makes it: status, headers, messages, trailers.

    `request` bytes are sent as the body as they are (a test's own, maybe malformed, frames).
    """
    body = request if isinstance(request, bytes) else grpc_web_frame(request.SerializeToString())
    sent = {**GRPC_WEB_HEADERS, **(headers or {})}
    if origin is not None:
        sent["origin"] = origin
    status, response_headers, data = fetch(
        port, "POST", f"{SERVICE}/{method}", body=body, headers=sent
    )
    messages, trailers = parse_grpc_web(data)
    return status, response_headers, messages, trailers


def parse_grpc_web(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    """Split a gRPC-Web body into its messages and its trailer frame (flag 0x80)."""
    messages, trailers, rest = split_frames(body)
    assert not rest, "truncated gRPC-Web frame"
    return messages, trailers


def split_frames(data: bytes) -> tuple[list[bytes], dict[str, str], bytes]:
    """The whole frames at the start of `data`: messages, trailers, and the bytes left over."""
    messages: list[bytes] = []
    trailers: dict[str, str] = {}
    offset = 0
    while len(data) - offset >= 5:
        flag = data[offset]
        (length,) = struct.unpack(">I", data[offset + 1 : offset + 5])
        if len(data) - offset - 5 < length:
            break
        payload = data[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if flag & 0x80:
            for line in payload.decode().split("\r\n"):
                if line:
                    name, _, value = line.partition(":")
                    trailers[name.strip().lower()] = value.strip()
        else:
            messages.append(payload)
    return messages, trailers, data[offset:]


def watch_events(data: bytes) -> list[task_pb2.TaskEvent]:
    """The events of one WatchTask response message (the one place that decodes them)."""
    return list(task_service_pb2.WatchTaskResponse.FromString(data).events)


def is_heartbeat(event: task_pb2.TaskEvent) -> bool:
    return event.WhichOneof("kind") == "heartbeat"


def is_end(event: task_pb2.TaskEvent) -> bool:
    """The event that ends a task: its move to a terminal state."""
    terminal = (
        task_pb2.Task.STATE_SUCCEEDED,
        task_pb2.Task.STATE_FAILED,
        task_pb2.Task.STATE_CANCELLED,
    )
    return (
        event.WhichOneof("kind") == "task_state_changed"
        and event.task_state_changed.state in terminal
    )


@dataclass(frozen=True)
class Arrival:
    """An event and when it arrived (seconds since the epoch, as `create_time`)."""

    at: float
    event: task_pb2.TaskEvent

    @property
    def lag_s(self) -> float:
        """Arrival time minus the event's creation time."""
        return self.at - self.event.create_time.ToNanoseconds() / 1e9


def whole_watch_call(
    port: int, request: task_service_pb2.WatchTaskRequest
) -> tuple[list[Arrival], str]:
    """A gRPC-Web WatchTask read whole (a bounded one): its events, arrived together, and
    its gRPC status."""
    status, headers, messages, trailers = grpc_web_call(port, "WatchTask", request)
    arrived = time.time()
    assert status == 200, (status, headers)
    events = [event for data in messages for event in watch_events(data)]
    grpc_status = headers.get("grpc-status") or trailers.get("grpc-status", "")
    return [Arrival(arrived, event) for event in events], grpc_status


@dataclass(frozen=True)
class StreamEnd:
    """How a stream ended: HTTP status, gRPC status (headers or trailers), and any error."""

    http_status: int
    grpc_status: str
    error: BaseException | None = None


class WatchStream:
    """A WatchTask call read in a thread: events as they arrive, then how it ended."""

    def __init__(
        self,
        items: queue.Queue[Arrival | StreamEnd],
        closing: threading.Event,
        stop: Callable[[], None],
    ) -> None:
        self._items = items
        self._closing = closing
        self._stop = stop
        self.end: StreamEnd | None = None

    def next(self, timeout_s: float) -> Arrival | None:
        """The next arrival (heartbeats included), or None once the stream has ended.

        Raises TimeoutError when nothing comes within `timeout_s`.
        """
        if self.end is not None:
            return None
        try:
            item = self._items.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError(f"nothing arrived within {timeout_s} s") from None
        if isinstance(item, StreamEnd):
            self.end = item
            return None
        return item

    def until(self, done: Callable[[Arrival], bool], timeout_s: float) -> list[Arrival]:
        """Arrivals up to and including the first that is `done`, within `timeout_s` in all."""
        deadline = time.monotonic() + timeout_s
        seen: list[Arrival] = []
        while True:
            arrival = self.next(max(0.0, deadline - time.monotonic()))
            if arrival is None:
                raise AssertionError(f"the stream ended ({self.end}) after {len(seen)} arrivals")
            seen.append(arrival)
            if done(arrival):
                return seen

    def rest(self, timeout_s: float) -> list[Arrival]:
        """Every arrival until the stream ends, within `timeout_s` in all."""
        deadline = time.monotonic() + timeout_s
        seen: list[Arrival] = []
        while (arrival := self.next(max(0.0, deadline - time.monotonic()))) is not None:
            seen.append(arrival)
        return seen

    def close(self) -> None:
        """Stop reading: the call is cancelled, its connection closed. Safe to call twice."""
        if not self._closing.is_set():
            self._closing.set()
            self._stop()


def open_grpc_web_watch(
    port: int, request: message.Message, *, headers: dict[str, str] | None = None
) -> WatchStream:
    """Start a gRPC-Web WatchTask through whatever listens on `port`, read in a thread."""
    items: queue.Queue[Arrival | StreamEnd] = queue.Queue()
    closing = threading.Event()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = grpc_web_frame(request.SerializeToString())
    connection.request(
        "POST", WATCH_TASK, body=body, headers={**GRPC_WEB_HEADERS, **(headers or {})}
    )

    def read() -> None:
        status, grpc_status, error = 0, "", None
        try:
            response = connection.getresponse()
            status = response.status
            grpc_status = response.getheader("grpc-status") or ""
            pending = b""
            while not closing.is_set() and (chunk := response.read1(65536)):
                arrived = time.time()
                messages, trailers, pending = split_frames(pending + chunk)
                for data in messages:
                    for event in watch_events(data):
                        items.put(Arrival(arrived, event))
                grpc_status = trailers.get("grpc-status", grpc_status)
        except (OSError, http.client.HTTPException) as problem:
            error = problem
        finally:
            connection.close()
            items.put(StreamEnd(status, grpc_status, None if closing.is_set() else error))

    def stop() -> None:
        if connection.sock is not None:
            connection.sock.shutdown(socket.SHUT_RDWR)

    threading.Thread(target=read, name="grpc-web-watch", daemon=True).start()
    return WatchStream(items, closing, stop)


def open_native_watch(target: str, request: message.Message) -> WatchStream:
    """Start a native gRPC (h2c) WatchTask to `target`, read in a thread."""
    items: queue.Queue[Arrival | StreamEnd] = queue.Queue()
    closing = threading.Event()
    channel = grpc.insecure_channel(target)
    # The raw bytes of each response, so `watch_events` decodes them as for gRPC-Web.
    watch_task = channel.unary_stream(
        WATCH_TASK, request_serializer=lambda m: m.SerializeToString(), response_deserializer=None
    )
    call = watch_task(request, timeout=120)

    def read() -> None:
        code, error = "", None
        try:
            for data in call:
                arrived = time.time()
                for event in watch_events(data):
                    items.put(Arrival(arrived, event))
            code = "0"
        except grpc.RpcError as problem:
            code, error = str(problem.code().value[0]), problem
        finally:
            channel.close()
            items.put(StreamEnd(200, code, None if closing.is_set() else error))

    threading.Thread(target=read, name="native-watch", daemon=True).start()
    return WatchStream(items, closing, call.cancel)
