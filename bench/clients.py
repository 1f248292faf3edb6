"""Watchers: native gRPC, gRPC-Web over HTTP/1.1 (through Envoy) and Socket.IO.

Each reads one stream to its end and records, for every event, the time from its
`create_time` (stamped by the server when it stored or generated the event) to its arrival
here (`time.time()`, the same clock on the same machine), and checks that the seqs come
1, 2, 3 … with no gap and no duplicate.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from mitosis.v1 import task_service_pb2, task_service_pb2_grpc

GRPC_WEB_TYPE = "application/grpc-web+proto"


@dataclass
class Received:
    """What one watcher got."""

    after_seq: int = 0
    keep_latencies: bool = True
    count: int = 0
    """Events received, heartbeats left out."""
    out_of_order: int = 0
    """Events whose seq was not the one after the previous: a gap or a duplicate."""
    last_seq: int = 0
    latencies: list[float] = field(default_factory=list)
    started: float = 0.0
    first_create: float = 0.0
    last_arrival: float = 0.0
    finished: bool = False
    error: str = ""

    def __post_init__(self) -> None:
        self.last_seq = self.after_seq

    def add(self, seq: int, create_time: float, arrival: float) -> None:
        if seq != self.last_seq + 1:
            self.out_of_order += 1
        self.last_seq = seq
        if self.count == 0:
            self.first_create = create_time
        self.count += 1
        self.last_arrival = arrival
        if self.keep_latencies:
            self.latencies.append(arrival - create_time)

    def complete(self, expected: int) -> bool:
        """Whether it got exactly seqs after_seq+1 … after_seq+expected, in order."""
        return (
            self.finished
            and not self.error
            and self.out_of_order == 0
            and self.count == expected
            and self.last_seq == self.after_seq + expected
        )


def _request(task_id: str, after_seq: int) -> task_service_pb2.WatchTaskRequest:
    return task_service_pb2.WatchTaskRequest(task_id=task_id, after_seq=after_seq)


# --- native gRPC ----------------------------------------------------------------------------


def native_channel(target: str) -> grpc.aio.Channel:
    """A channel of its own (its own TCP connection): watchers here are separate clients."""
    return grpc.aio.insecure_channel(
        target,
        options=[("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)],
    )


async def watch_native(
    channel: grpc.aio.Channel, task_id: str, received: Received, within: float
) -> Received:
    """Read WatchTask over native gRPC until the stream ends."""
    stub = task_service_pb2_grpc.TaskServiceStub(channel)
    received.started = time.time()
    try:
        call = stub.WatchTask(_request(task_id, received.after_seq), timeout=within)
        async for message in call:
            now = time.time()
            for event in message.events:
                if event.WhichOneof("kind") != "heartbeat":
                    received.add(event.seq, event.create_time.ToNanoseconds() / 1e9, now)
        received.finished = True
    except grpc.aio.AioRpcError as error:
        received.error = f"{error.code().name}: {error.details()}"
    return received


# --- gRPC-Web over HTTP/1.1 -----------------------------------------------------------------


class GrpcWebError(Exception):
    """A gRPC-Web call that did not end with grpc-status 0."""


def _frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def _fields(block: bytes) -> dict[str, str]:
    """Header lines ("name: value", CRLF-separated) as a dict with lower-case names."""
    found: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            found[name.strip().lower()] = value.strip()
    return found


class _GrpcWebStream(asyncio.Protocol):
    """One gRPC-Web call over its own HTTP/1.1 connection, parsed as the bytes arrive.

    HTTP/1.1 response: status line and headers, then the body, chunked (as Envoy sends a
    stream) or with a content length. The body is gRPC-Web frames: a flag byte (0x00 a
    message, 0x80 the trailers, as header lines) and a 4-byte big-endian length. Written on
    asyncio's Protocol rather than an HTTP library so that the client costs a few
    microseconds per message: a thousand watchers on two shared cores must not be limited by
    their own parsing.
    """

    def __init__(self, request: bytes, received: Received) -> None:
        self.request = request
        self.received = received
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self._raw = bytearray()  # bytes not yet parsed as HTTP
        self._body = bytearray()  # the HTTP body not yet parsed as frames
        self._headers: dict[str, str] | None = None
        self._chunked = True
        self._left = -1  # bytes of body left (content-length), or of the current chunk
        self._parse = task_service_pb2.WatchTaskResponse.FromString

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"connection closed before the trailers ({exc!r})")

    def data_received(self, data: bytes) -> None:
        try:
            self._raw += data
            if self._headers is None and not self._read_headers():
                return
            self._read_body()
            self._read_frames()
        except GrpcWebError as error:
            self._fail(str(error))

    def _fail(self, message: str) -> None:
        if not self.done.done():
            self.received.error = message
            self.done.set_result(None)
        if self.transport is not None:
            self.transport.close()

    def _finish(self, trailers: dict[str, str]) -> None:
        status = trailers.get("grpc-status", "")
        if status != "0":
            raise GrpcWebError(f"grpc-status {status or '?'}: {trailers.get('grpc-message')}")
        self.received.finished = True
        if not self.done.done():
            self.done.set_result(None)
        assert self.transport is not None
        self.transport.close()

    def _read_headers(self) -> bool:
        end = self._raw.find(b"\r\n\r\n")
        if end < 0:
            return False
        status_line, _, rest = bytes(self._raw[:end]).partition(b"\r\n")
        del self._raw[: end + 4]
        headers = self._headers = _fields(rest)
        if status_line.split(b" ", 2)[1:2] != [b"200"]:
            raise GrpcWebError(f"HTTP {status_line.decode('latin-1')}")
        if "grpc-status" in headers:  # trailers only: an error before any message
            self._finish(headers)
        self._chunked = "chunked" in headers.get("transfer-encoding", "")
        if not self._chunked:
            self._left = int(headers.get("content-length", "0"))
        return True

    def _read_body(self) -> None:
        raw = self._raw
        if not self._chunked:
            self._body += raw
            self._left -= len(raw)
            raw.clear()
            return
        while raw:
            if self._left < 0:  # at a chunk-size line
                end = raw.find(b"\r\n")
                if end < 0:
                    return
                self._left = int(bytes(raw[:end]).split(b";")[0], 16)
                del raw[: end + 2]
                if self._left == 0:
                    return  # the last chunk; the frames say when the call ended
            if len(raw) < self._left + 2:  # the rest of the chunk, or its CRLF, is to come
                take = min(len(raw), self._left)
                self._body += raw[:take]
                del raw[:take]
                self._left -= take
                return
            self._body += raw[: self._left]
            del raw[: self._left + 2]
            self._left = -1

    def _read_frames(self) -> None:
        body = self._body
        at = 0
        while len(body) - at >= 5:
            length = int.from_bytes(body[at + 1 : at + 5], "big")
            if len(body) - at - 5 < length:
                break
            message = bytes(body[at + 5 : at + 5 + length])
            if body[at] & 0x80:
                del body[: at + 5 + length]
                self._finish(_fields(message))
                return
            at += 5 + length
            now = time.time()
            for event in self._parse(message).events:
                if event.WhichOneof("kind") != "heartbeat":
                    self.received.add(event.seq, event.create_time.ToNanoseconds() / 1e9, now)
        del body[:at]


async def watch_grpc_web(
    base_url: str, task_id: str, received: Received, within: float
) -> Received:
    """Read WatchTask as a browser does: one gRPC-Web POST over HTTP/1.1, to its end."""
    host, _, port = base_url.removeprefix("http://").partition(":")
    message = _frame(_request(task_id, received.after_seq).SerializeToString())
    head = (
        "POST /mitosis.v1.TaskService/WatchTask HTTP/1.1\r\n"
        f"host: {host}:{port}\r\n"
        f"content-type: {GRPC_WEB_TYPE}\r\naccept: {GRPC_WEB_TYPE}\r\n"
        "x-grpc-web: 1\r\nx-user-agent: mitosis-bench\r\n"
        f"grpc-timeout: {max(1, int(within))}S\r\n"
        f"content-length: {len(message)}\r\nconnection: close\r\n\r\n"
    )
    stream = _GrpcWebStream(head.encode() + message, received)
    received.started = time.time()
    loop = asyncio.get_running_loop()
    try:
        await loop.create_connection(lambda: stream, host, int(port))
        await asyncio.wait_for(asyncio.shield(stream.done), within)
    except (OSError, TimeoutError) as error:
        received.error = repr(error)
    finally:
        if stream.transport is not None:
            stream.transport.close()
    return received


# --- Socket.IO ------------------------------------------------------------------------------


class SocketIOWatcher:
    """python-socketio's AsyncClient over WebSocket, joined to one stream's room."""

    def __init__(self, url: str, task_id: str, received: Received) -> None:
        import socketio  # type: ignore[import-untyped]

        self.url = url
        self.task_id = task_id
        self.received = received
        self.done = asyncio.Event()
        self.client = socketio.AsyncClient(reconnection=False)
        self.client.on("event", self._on_event)
        self.client.on("disconnect", self._on_disconnect)

    def _on_event(self, data: dict[str, Any]) -> None:
        now = time.time()
        self.received.add(int(data["seq"]), data["createTimeNs"] / 1e9, now)
        if "taskStateChanged" in data:
            self.received.finished = True
            self.done.set()

    def _on_disconnect(self, *args: Any) -> None:
        if not self.received.finished:
            self.received.error = "disconnected before the end"
        self.done.set()

    async def connect(self) -> None:
        self.received.started = time.time()
        await self.client.connect(
            self.url, transports=["websocket"], auth={"task_id": self.task_id}, wait_timeout=10
        )

    async def run(self, within: float) -> Received:
        try:
            await asyncio.wait_for(self.done.wait(), within)
        except TimeoutError:
            self.received.error = "timed out"
        finally:
            await self.client.disconnect()
        return self.received
