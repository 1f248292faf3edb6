"""A fake OpenAI-compatible server: real HTTP/1.1 on a loopback port, scripted per test.

It speaks `POST /v1/chat/completions` as the API does: JSON answers (`chat.completion` with a
message, `finish_reason` and `usage`), and with `"stream": true` server-sent events over a
chunked response (`chat.completion.chunk`s with content deltas and tool-call deltas split over
several chunks, a usage chunk when `stream_options.include_usage`, then `data: [DONE]`).

It runs its own event loop in a thread, so sync tests, async tests and services in
subprocesses can all use it; the `openai` client reaches it at `base_url` over TCP.

    with FakeOpenAI() as fake:
        fake.script(plan_reply({...}), ToolCalls([Call("python", {"code": "print(1)"})]),
                    Text("done"))
        ...  # point OpenAISettings(base_url=fake.base_url, api_key="test") at it
        fake.exchanges[0].body["response_format"]  # what the client sent

Each request takes the next scripted reply (a client retry takes one too). With the queue
empty, `responder(body)` decides, if set; otherwise the answer is a 400 saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from tests.support.waiting import eventually

# Scripted replies ----------------------------------------------------------------------------


@dataclass
class Reply:
    """What the server does with one request. `delay` is waited before anything is sent."""

    delay: float = field(default=0.0, kw_only=True)
    prompt_tokens: int = field(default=100, kw_only=True)
    completion_tokens: int = field(default=20, kw_only=True)


@dataclass
class Text(Reply):
    """A content answer: a plan's JSON, malformed text, a document, a final word.

    Streamed as `pieces` (default: the content split after each run of whitespace, roughly a
    token each) with `piece_delay` seconds before each; `drop_after` pieces sent, the
    connection is dropped mid-stream (no terminating chunk, no [DONE]).
    """

    content: str = ""
    pieces: Sequence[str] | None = None
    piece_delay: float = 0.0
    finish_reason: str = "stop"
    refusal: str | None = None
    drop_after: int | None = None

    def stream_pieces(self) -> list[str]:
        if self.pieces is not None:
            return list(self.pieces)
        return re.findall(r"\S+\s*|\s+", self.content)

    def full_content(self) -> str:
        return "".join(self.pieces) if self.pieces is not None else self.content


@dataclass
class Call:
    """One function call in a ToolCalls reply; `arguments` is a dict, or raw (bad) JSON text."""

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    id: str | None = None

    def arguments_text(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments)


@dataclass
class ToolCalls(Reply):
    """An answer that calls tools; streamed with each call's arguments split over chunks."""

    calls: Sequence[Call] = ()
    content: str = ""
    piece_delay: float = 0.0


@dataclass
class HttpError(Reply):
    """An error status with the API's error body; `retry-after-ms` keeps client retries fast."""

    status: int = 500
    message: str = "The server had an error while processing your request."
    error_type: str | None = None
    code: str | None = None
    retry_after_ms: int | None = 10
    headers: dict[str, str] = field(default_factory=dict)
    param: str | None = None
    shape: str = "openai"
    """The error body's shape: "openai" (also Ollama's and llama.cpp's: `{"error": {...}}`)
    or "vllm" (`{"object": "error", "message": ..., "code": 400}` at the top level)."""


@dataclass
class Hang(Reply):
    """Send nothing for `seconds` (or until the client goes), then close the connection."""

    seconds: float = 30.0


@dataclass
class Drop(Reply):
    """Close the connection without answering (after `delay`)."""


def plan_reply(plan: dict[str, Any] | str, **options: Any) -> Text:
    """A Text reply whose content is the plan as JSON (a dict is dumped, a str sent as is)."""
    content = plan if isinstance(plan, str) else json.dumps(plan)
    return Text(content, **options)


def plan_step(
    title: str,
    tool: str,
    *,
    instructions: str = "",
    rationale: str = "",
    file_name: str = "",
    doc_title: str = "",
    code: str = "",
    path: str = "",
) -> dict[str, Any]:
    """One step in the strict schema's shape, every argument key present."""
    return {
        "title": title,
        "tool": tool,
        "rationale": rationale or f"{tool} is the tool for {title.lower()}",
        "instructions": instructions or f"{title}.",
        "arguments": {"file_name": file_name, "title": doc_title, "code": code, "path": path},
    }


def error_429(message: str = "Rate limit reached for requests", **options: Any) -> HttpError:
    """A 429 as OpenAI sends it."""
    return HttpError(
        status=429, message=message, error_type="requests", code="rate_limit_exceeded", **options
    )


def error_401(**options: Any) -> HttpError:
    """A 401 as OpenAI sends it for a bad key."""
    return HttpError(
        status=401,
        message="Incorrect API key provided: sk-bad. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        error_type="invalid_request_error",
        code="invalid_api_key",
        retry_after_ms=None,
        **options,
    )


# What the server saw -------------------------------------------------------------------------


@dataclass
class SentChunk:
    """A content piece the server sent, and when (`time.time()` just before the socket write)."""

    at: float
    text: str


def _lists_models(exchange: Exchange) -> bool:
    """`GET /v1/models`: what a client asks to see that the server is there (a health probe)."""
    return exchange.method == "GET" and exchange.path.split("?")[0] == "/v1/models"


@dataclass
class Exchange:
    """One request the server received and what it did about it."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    received_at: float
    reply: Reply | None = None
    status: int = 0
    sent: list[SentChunk] = field(default_factory=list)
    finished: bool = False
    """The whole answer was sent."""
    disconnected: bool = False
    """The client closed the connection before the answer was complete."""

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages = self.body.get("messages", [])
        return messages if isinstance(messages, list) else []

    @property
    def tool_names(self) -> list[str]:
        return [tool["function"]["name"] for tool in self.body.get("tools", [])]

    def text(self) -> str:
        """Every message's content in the request, joined, for `in` checks."""
        parts = []
        for message in self.messages:
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
        return "\n".join(parts)


# The server ----------------------------------------------------------------------------------


class FakeOpenAI:
    """The fake server; use as a context manager, or call `start()` and `close()`."""

    def __init__(self) -> None:
        self.responder: Callable[[dict[str, Any]], Reply] | None = None
        self.port = 0
        self._queue: deque[Reply] = deque()
        self._exchanges: list[Exchange] = []
        self.model_list_requests = 0
        """GET /v1/models requests (health probes): answered with one model, not scripted."""
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._counter = 0

    # Scripting ----------------------------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Queue replies, answered in order, one per request (client retries included)."""
        with self._lock:
            self._queue.extend(replies)

    @property
    def pending(self) -> int:
        """Scripted replies not used yet."""
        with self._lock:
            return len(self._queue)

    @property
    def exchanges(self) -> list[Exchange]:
        """The requests received so far, oldest first (a snapshot of the list)."""
        with self._lock:
            return list(self._exchanges)

    @property
    def bodies(self) -> list[dict[str, Any]]:
        """The parsed JSON bodies of the requests so far."""
        return [exchange.body for exchange in self.exchanges]

    @property
    def base_url(self) -> str:
        """The URL to give the client, `http://127.0.0.1:<port>/v1`."""
        return f"http://127.0.0.1:{self.port}/v1"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment variables that point a service (a subprocess, say) at this server."""
        return {"OPENAI_API_KEY": "sk-fake", "OPENAI_BASE_URL": self.base_url, **extra}

    async def wait_for(self, condition: Callable[[], bool], within: float = 5.0) -> None:
        """Wait (polling) until `condition()` is true; raise TimeoutError after `within` s."""
        await eventually(
            condition, timeout=within, interval=0.01, what="the fake OpenAI server's state"
        )

    # Life ----------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start serving in a thread; return once the port is open."""
        self._thread = threading.Thread(target=self._run, name="fake-openai", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake OpenAI server did not start")
        return self

    def close(self) -> None:
        """Stop serving and close every connection."""
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await server.wait_closed()

    # HTTP ----------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                exchange = await self._read_request(reader)
                if exchange is None:
                    break
                if not await self._answer(exchange, reader, writer):
                    break
                if exchange.headers.get("connection", "").lower() == "close":
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_request(self, reader: asyncio.StreamReader) -> Exchange | None:
        line = await reader.readline()
        if not line:
            return None
        method, path, _ = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while True:
            header = await reader.readline()
            if header in (b"\r\n", b"\n", b""):
                break
            name, _, value = header.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        raw = await reader.readexactly(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            body = {"_unparsed": raw.decode("utf-8", "replace")}
        exchange = Exchange(method, path, headers, body, received_at=time.time())
        with self._lock:
            if _lists_models(exchange):
                self.model_list_requests += 1  # a health probe: kept apart from the script
            else:
                self._exchanges.append(exchange)
        return exchange

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        if self.responder is not None:
            return self.responder(body)
        return HttpError(
            status=400,
            message="the fake OpenAI server has no scripted reply for this request",
            error_type="invalid_request_error",
            retry_after_ms=None,
        )

    async def _answer(
        self, exchange: Exchange, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; return whether the connection may carry another."""
        if _lists_models(exchange):
            models = {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}
            await self._send_body(exchange, 200, models, writer, {})
            return True
        if exchange.method != "POST" or exchange.path.split("?")[0] != "/v1/chat/completions":
            reply: Reply = HttpError(
                status=404,
                message=f"Invalid URL ({exchange.method} {exchange.path})",
                error_type="invalid_request_error",
                retry_after_ms=None,
            )
        else:
            reply = self._next_reply(exchange.body)
        exchange.reply = reply
        if reply.delay and await self._client_left(reader, reply.delay):
            exchange.disconnected = True
            return False
        if isinstance(reply, Hang):
            exchange.disconnected = await self._client_left(reader, reply.seconds)
            return False
        if isinstance(reply, Drop):
            return False
        if isinstance(reply, HttpError):
            await self._send_error(exchange, reply, writer)
            return True
        if exchange.stream:
            return await self._send_stream(exchange, reply, reader, writer)
        await self._send_json(exchange, reply, writer)
        return True

    async def _client_left(self, reader: asyncio.StreamReader, seconds: float) -> bool:
        """Wait `seconds`; return True (early) if the client closes the connection."""
        try:
            data = await asyncio.wait_for(reader.read(1), timeout=seconds)
        except TimeoutError:
            return False
        return not data

    async def _send_error(
        self, exchange: Exchange, reply: HttpError, writer: asyncio.StreamWriter
    ) -> None:
        payload: dict[str, Any] = {
            "error": {
                "message": reply.message,
                "type": reply.error_type,
                "param": reply.param,
                "code": reply.code,
            }
        }
        if reply.shape == "vllm":
            payload = {
                "object": "error",
                "message": reply.message,
                "type": reply.error_type or "BadRequestError",
                "param": reply.param,
                "code": reply.status,
            }
        headers = dict(reply.headers)
        if reply.retry_after_ms is not None:
            headers.setdefault("retry-after-ms", str(reply.retry_after_ms))
        await self._send_body(exchange, reply.status, payload, writer, headers)

    async def _send_json(
        self, exchange: Exchange, reply: Reply, writer: asyncio.StreamWriter
    ) -> None:
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
        finish_reason = "stop"
        if isinstance(reply, Text):
            message["content"] = reply.full_content()
            message["refusal"] = reply.refusal
            finish_reason = reply.finish_reason
        elif isinstance(reply, ToolCalls):
            message["content"] = reply.content or None
            message["tool_calls"] = [
                {
                    "id": self._call_id(call),
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments_text()},
                }
                for call in reply.calls
            ]
            finish_reason = "tool_calls"
        payload = {
            "id": self._completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": exchange.body.get("model", "fake"),
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
            ],
            "usage": _usage(reply),
            "system_fingerprint": "fp_fake",
        }
        if message["content"]:
            exchange.sent.append(SentChunk(time.time(), message["content"]))
        await self._send_body(exchange, 200, payload, writer, {})

    async def _send_body(
        self,
        exchange: Exchange,
        status: int,
        payload: dict[str, Any],
        writer: asyncio.StreamWriter,
        headers: dict[str, str],
    ) -> None:
        data = json.dumps(payload).encode()
        head = {
            "content-type": "application/json",
            "content-length": str(len(data)),
            "x-request-id": f"req_fake_{len(self._exchanges)}",
            **headers,
        }
        exchange.status = status
        writer.write(_status_line(status, head) + data)
        await writer.drain()
        exchange.finished = True

    async def _send_stream(
        self,
        exchange: Exchange,
        reply: Reply,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        exchange.status = 200
        writer.write(
            _status_line(
                200,
                {
                    "content-type": "text/event-stream; charset=utf-8",
                    "transfer-encoding": "chunked",
                    "cache-control": "no-cache",
                    "x-request-id": f"req_fake_{len(self._exchanges)}",
                },
            )
        )
        await writer.drain()
        base = {
            "id": self._completion_id(),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": exchange.body.get("model", "fake"),
            "system_fingerprint": "fp_fake",
        }
        include_usage = bool((exchange.body.get("stream_options") or {}).get("include_usage"))

        async def event(data: dict[str, Any] | str) -> None:
            if isinstance(data, dict) and include_usage and "usage" not in data:
                data = {**data, "usage": None}
            text = data if isinstance(data, str) else json.dumps(data)
            raw = f"data: {text}\n\n".encode()
            writer.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
            await writer.drain()

        def delta(content: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            choice = {
                "index": 0,
                "delta": content,
                "logprobs": None,
                "finish_reason": finish_reason,
            }
            return {**base, "choices": [choice]}

        async def pause(seconds: float) -> bool:
            if seconds and await self._client_left(reader, seconds):
                exchange.disconnected = True
                return True
            return False

        try:
            await event(delta({"role": "assistant", "content": "", "refusal": None}))
            if isinstance(reply, Text):
                finish_reason = reply.finish_reason
                for number, piece in enumerate(reply.stream_pieces()):
                    if reply.drop_after is not None and number >= reply.drop_after:
                        return False
                    if await pause(reply.piece_delay):
                        return False
                    exchange.sent.append(SentChunk(time.time(), piece))
                    await event(delta({"content": piece}))
                if reply.drop_after is not None and reply.drop_after >= len(reply.stream_pieces()):
                    return False
                if reply.refusal:
                    await event(delta({"refusal": reply.refusal}))
            elif isinstance(reply, ToolCalls):
                finish_reason = "tool_calls"
                for piece in re.findall(r"\S+\s*|\s+", reply.content):
                    exchange.sent.append(SentChunk(time.time(), piece))
                    await event(delta({"content": piece}))
                for index, call in enumerate(reply.calls):
                    if await pause(reply.piece_delay):
                        return False
                    opening = {
                        "index": index,
                        "id": self._call_id(call),
                        "type": "function",
                        "function": {"name": call.name, "arguments": ""},
                    }
                    await event(delta({"tool_calls": [opening]}))
                    for piece in _thirds(call.arguments_text()):
                        part = {"index": index, "function": {"arguments": piece}}
                        await event(delta({"tool_calls": [part]}))
            else:
                finish_reason = "stop"
            await event(delta({}, finish_reason))
            if include_usage:
                await event({**base, "choices": [], "usage": _usage(reply)})
            await event("[DONE]")
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            exchange.disconnected = True
            return False
        exchange.finished = True
        return True

    def _completion_id(self) -> str:
        with self._lock:
            self._counter += 1
            return f"chatcmpl-fake{self._counter}"

    def _call_id(self, call: Call) -> str:
        if call.id is None:
            with self._lock:
                self._counter += 1
                call.id = f"call_fake{self._counter}"
        return call.id


def _status_line(status: int, headers: dict[str, str]) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    lines = [f"HTTP/1.1 {status} {phrase}"] + [
        f"{name}: {value}" for name, value in headers.items()
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _usage(reply: Reply) -> dict[str, int]:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


def _thirds(text: str) -> list[str]:
    """Split a call's arguments over three chunks, as the API splits them over many."""
    if len(text) < 3:
        return [text]
    size = -(-len(text) // 3)
    return [text[start : start + size] for start in range(0, len(text), size)]
