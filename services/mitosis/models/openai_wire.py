"""The OpenAI-compatible endpoint on the wire: settings, the client, faults, and streams.

This is the one module that talks to `openai.AsyncOpenAI`. It works with any server that
speaks `/v1/chat/completions` (OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp's server):

- 429 and 5xx answers, timeouts and dropped connections before an answer are retried by the
  library itself, with backoff, at most `max_retries` times. While that happens a callback
  set with `report_model_waits` (a log line for watchers) hears about every wait;
- a refused key (401/403) or an unknown model (404) raises `ModelUnusable` at once;
- a call that gets no answer within `timeout_s` (after the retries) raises `ModelTimedOut`;
- anything else the endpoint answers with, or a stream that breaks off, raises
  `ModelCallFailed`, with the status and the endpoint's own words.

The errors are `StepFailure`s (the executor fails or retries the step) and `MitosisError`s
(the planner service turns them into a gRPC status carrying the same message).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import NoReturn

import grpc
import httpx2
import openai
from openai.types.chat import (
    ChatCompletionChunk,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageParam,
    ChatCompletionToolChoiceOptionParam,
)
from openai.types.shared_params import ResponseFormatJSONObject, ResponseFormatJSONSchema

from mitosis.errors import MODEL_UNAVAILABLE, MitosisError
from mitosis.models.base import FatalModelError, ModelUsage, StepFailure

DEFAULT_MODEL = "gpt-4o-mini"

_log = logging.getLogger(__name__)

_SHOWN_CHARS = 300
"""How much of an endpoint's error message (or a model's answer) an error message quotes."""

WaitCallback = Callable[[str], Awaitable[None]]
"""Hears, in a person's words, that a model call is waiting (a 429, a 5xx, a retry)."""


# Settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenAISettings:
    """How to reach an OpenAI-compatible endpoint, which models to use, and the step caps."""

    base_url: str | None
    """The endpoint, for example "http://127.0.0.1:11434/v1" for Ollama; None for OpenAI."""
    api_key: str
    plan_model: str = DEFAULT_MODEL
    step_model: str = DEFAULT_MODEL
    max_retries: int = 3
    """Retries of a call that got a 429, a 5xx, a timeout or no connection (0: none)."""
    timeout_s: float = 60.0
    """How long one attempt may wait for the endpoint to send anything."""
    max_iterations: int = 8
    """Model calls one step's agent loop may make (document streams not counted)."""
    max_tokens_per_step: int = 20000
    """Input plus output tokens one step may use, document streams included."""

    def __post_init__(self) -> None:
        if not self.api_key.strip():
            raise ValueError("api_key is empty; set OPENAI_API_KEY (any text for Ollama)")
        if not self.plan_model.strip() or not self.step_model.strip():
            raise ValueError("the plan and step model names must not be empty")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, not {self.max_retries}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be more than 0 seconds, not {self.timeout_s}")
        if self.max_iterations < 1:
            raise ValueError(f"max_iterations must be 1 or more, not {self.max_iterations}")
        if self.max_tokens_per_step < 1:
            raise ValueError(
                f"max_tokens_per_step must be 1 or more, not {self.max_tokens_per_step}"
            )


def from_env(env: Mapping[str, str]) -> OpenAISettings | None:
    """Return settings from OPENAI_* and MITOSIS_* variables, or None when there is no key.

    `OPENAI_API_KEY` (required), `OPENAI_BASE_URL` (optional), `MITOSIS_PLAN_MODEL` and
    `MITOSIS_STEP_MODEL` (default gpt-4o-mini; the step model defaults to the plan model when
    only that is set, so one variable is enough to point both at a local model).
    """
    key = env.get("OPENAI_API_KEY", "").strip()
    if not key:
        return None
    plan_model = env.get("MITOSIS_PLAN_MODEL", "").strip() or DEFAULT_MODEL
    step_model = env.get("MITOSIS_STEP_MODEL", "").strip() or plan_model
    return OpenAISettings(
        base_url=env.get("OPENAI_BASE_URL", "").strip() or None,
        api_key=key,
        plan_model=plan_model,
        step_model=step_model,
    )


# Errors --------------------------------------------------------------------------------------


class ModelUnusable(FatalModelError, MitosisError):
    """The endpoint refused the key or does not know the model: no retry will help."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ModelCallFailed(StepFailure, MitosisError):
    """A model call failed after the client's retries; the message says how."""

    code = grpc.StatusCode.UNKNOWN


class ModelUnreachable(ModelCallFailed):
    """No connection to the model server could be made, on every attempt: it is down, or
    OPENAI_BASE_URL points elsewhere. UNAVAILABLE, with the address and what to check."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, endpoint: str) -> None:
        super().__init__(message, reason=MODEL_UNAVAILABLE, metadata={"endpoint": endpoint})


class ModelTimedOut(ModelCallFailed):
    """The endpoint sent nothing within the deadline, on every attempt."""


class FormatRefused(ModelCallFailed):
    """The endpoint answered 400 to the call's `response_format` (or forced tool choice):
    a server that does not support it, as vLLM, Ollama or an older model answer."""


def unreachable_message(endpoint: str, error: BaseException, tries: str) -> str:
    """Return what to tell people when the model server cannot be reached: where, why in
    words (never an exception's class name), and what to check."""
    cause = error.__cause__ or error
    why = str(cause).strip() or "no connection could be made"
    return (
        f"the model server at {endpoint} is unreachable ({shorten(why, 160)}; {tries}); check"
        " that it is running and that OPENAI_BASE_URL points at it"
    )


def shorten(text: str, limit: int = _SHOWN_CHARS) -> str:
    """Return `text` on one line, cut to about `limit` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


# Waits -------------------------------------------------------------------------------------


@dataclass
class _WaitReporter:
    callback: WaitCallback
    status_reported: bool = False
    """The last failed attempt was a 429/5xx answer, already reported by the response hook."""


_waits: contextvars.ContextVar[_WaitReporter | None] = contextvars.ContextVar(
    "mitosis_model_waits", default=None
)


@contextlib.contextmanager
def report_model_waits(callback: WaitCallback) -> Iterator[None]:
    """Send a line to `callback` whenever a model call in this context waits on the endpoint.

    For example `with report_model_waits(tools.log): ...` in the executor, or a logger's
    coroutine in the planner. Without one, waits go to this module's Python logger only.
    """
    token = _waits.set(_WaitReporter(callback))
    try:
        yield
    finally:
        _waits.reset(token)


async def _report(text: str) -> None:
    _log.warning("%s", text)
    reporter = _waits.get()
    if reporter is None:
        return
    try:
        await reporter.callback(text)
    except Exception:
        _log.exception("the model wait callback failed")


# The client ----------------------------------------------------------------------------------


@dataclass
class ToolCall:
    """A function call the model asked for; `arguments` is its JSON text as sent."""

    id: str
    name: str
    arguments: str


@dataclass
class ChatResult:
    """What one streamed or unstreamed call answered, once it is over."""

    content: str = ""
    refusal: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    latency_ms: int = 0

    @property
    def tokens(self) -> int:
        """Input and output tokens together."""
        return self.input_tokens + self.output_tokens


class Wire:
    """An `AsyncOpenAI` client with the settings' retries and deadline, and the wait hooks."""

    def __init__(self, settings: OpenAISettings) -> None:
        self.settings = settings
        self._http = openai.DefaultAsyncHttpxClient(
            timeout=settings.timeout_s,
            event_hooks={"request": [self._on_request], "response": [self._on_response]},
        )
        self._client = openai.AsyncOpenAI(
            base_url=settings.base_url,
            api_key=settings.api_key,
            max_retries=settings.max_retries,
            timeout=settings.timeout_s,
            http_client=self._http,
        )

    @property
    def endpoint(self) -> str:
        """The endpoint's base URL, for messages."""
        return str(self._client.base_url)

    async def probe(self, within: float = 3.0) -> None:
        """Return when the model server answers at all (GET models, once, no retries), or
        raise ModelUnreachable. Any HTTP answer counts, a 401 or 404 too: it is there."""
        try:
            await self._client.with_options(max_retries=0, timeout=within).models.list()
        except openai.APIConnectionError as error:  # timeouts are connection errors too
            message = unreachable_message(self.endpoint, error, "1 attempt")
            raise ModelUnreachable(message, self.endpoint) from error
        except openai.APIError:
            return

    async def aclose(self) -> None:
        """Close the client and its connections."""
        await self._client.close()
        await self._http.aclose()

    async def complete(
        self,
        model: str,
        messages: Iterable[ChatCompletionMessageParam],
        *,
        response_format: ResponseFormatJSONSchema | ResponseFormatJSONObject | None = None,
        tools: Iterable[ChatCompletionFunctionToolParam] | None = None,
        tool_choice: ChatCompletionToolChoiceOptionParam | None = None,
        usage: ModelUsage | None = None,
    ) -> ChatResult:
        """Make one unstreamed call for a structured answer (a response format, or a forced
        tool call) and return it. A 400 about the response format or the tool choice raises
        FormatRefused.

        The call is counted in `usage` whether it succeeds or not (a failed one with no tokens).
        """
        started = time.monotonic()
        result = ChatResult()
        try:
            with self._translated(model):
                completion = await self._client.chat.completions.create(
                    model=model,
                    messages=messages,
                    response_format=response_format if response_format else openai.omit,
                    tools=list(tools) if tools is not None else openai.omit,
                    tool_choice=tool_choice if tool_choice is not None else openai.omit,
                )
            if completion.usage is not None:
                result.input_tokens = completion.usage.prompt_tokens
                result.output_tokens = completion.usage.completion_tokens
        finally:
            result.latency_ms = _elapsed_ms(started)
            if usage is not None:
                usage.add(result.input_tokens, result.output_tokens, result.latency_ms)
        if not completion.choices:
            raise ModelCallFailed(f"the model {model!r} answered with no choices")
        choice = completion.choices[0]
        result.finish_reason = choice.finish_reason or ""
        result.content = choice.message.content or ""
        result.refusal = choice.message.refusal or ""
        result.tool_calls = [
            ToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments)
            for call in choice.message.tool_calls or ()
            if call.type == "function"
        ]
        return result

    async def stream(
        self,
        model: str,
        messages: Iterable[ChatCompletionMessageParam],
        result: ChatResult,
        *,
        tools: Iterable[ChatCompletionFunctionToolParam] | None = None,
    ) -> AsyncGenerator[str, None]:
        """Make one streamed call; yield its text as it arrives and fill in `result`.

        Tool-call deltas are put together into `result.tool_calls`; the usage comes from the
        final chunk (`stream_options.include_usage`). When the consumer stops early or is
        cancelled, the HTTP response is closed, so the endpoint sees the client go: consume it
        inside `contextlib.aclosing` so that an early stop closes it at once.
        """
        started = time.monotonic()
        calls: dict[int, ToolCall] = {}
        try:
            with self._translated(model):
                response = await self._client.chat.completions.create(
                    model=model,
                    messages=messages,
                    stream=True,
                    stream_options={"include_usage": True},
                    tools=list(tools) if tools is not None else openai.omit,
                )
                async with response:
                    async for chunk in response:
                        text = _take_chunk(chunk, result, calls)
                        if text:
                            yield text
        finally:
            result.latency_ms = _elapsed_ms(started)
            result.tool_calls = [calls[index] for index in sorted(calls)]

    @contextlib.contextmanager
    def _translated(self, model: str) -> Iterator[None]:
        try:
            yield
        except openai.APIError as error:
            self._raise_for(error, model)

    def _raise_for(self, error: openai.APIError, model: str) -> NoReturn:
        attempts = _retry_count(error.request) + 1
        tries = f"{attempts} attempt{'s' * (attempts > 1)}"
        said = shorten(_endpoint_message(error))
        if isinstance(error, openai.AuthenticationError | openai.PermissionDeniedError):
            raise ModelUnusable(
                f"the model endpoint refused the API key ({error.status_code}): {said}; "
                "check OPENAI_API_KEY"
            ) from error
        if isinstance(error, openai.NotFoundError):
            raise ModelUnusable(
                f"the model endpoint at {self.endpoint} does not know the model {model!r} (404):"
                f" {said}; check MITOSIS_PLAN_MODEL / MITOSIS_STEP_MODEL and OPENAI_BASE_URL"
            ) from error
        if isinstance(error, openai.APITimeoutError):
            raise ModelTimedOut(
                f"the model did not answer within {self.settings.timeout_s:g} s ({tries})"
            ) from error
        if isinstance(error, openai.APIConnectionError):
            if isinstance(error.__cause__, httpx2.ConnectError | httpx2.ConnectTimeout):
                message = unreachable_message(self.endpoint, error, tries)
                raise ModelUnreachable(message, self.endpoint) from error
            how = str(error.__cause__ or error).strip() or "the connection was closed"
            raise ModelCallFailed(
                f"the connection to the model endpoint at {self.endpoint} failed: {shorten(how)}"
            ) from error
        if isinstance(error, openai.BadRequestError) and _about_format(error):
            raise FormatRefused(
                f"the model endpoint refused the structured-output format (400): {said}"
            ) from error
        if isinstance(error, openai.APIStatusError):
            after = f" after {tries}" if attempts > 1 else ""
            raise ModelCallFailed(
                f"the model endpoint answered {error.status_code}{after}: {said}"
            ) from error
        raise ModelCallFailed(f"the model endpoint reported an error: {said}") from error

    async def _on_request(self, request: httpx2.Request) -> None:
        retry = _retry_count(request)
        reporter = _waits.get()
        if retry <= 0:
            return
        if reporter is not None and reporter.status_reported:
            reporter.status_reported = False
            return
        await _report(
            "the model sent no answer (a timeout or a broken connection); retrying, "
            f"attempt {retry + 1} of {self.settings.max_retries + 1}"
        )

    async def _on_response(self, response: httpx2.Response) -> None:
        status = response.status_code
        if status != 429 and status < 500:
            return
        retry = _retry_count(response.request)
        attempts = self.settings.max_retries + 1
        left = self.settings.max_retries - retry
        reason = response.reason_phrase or ("Too Many Requests" if status == 429 else "error")
        asked = _asked_wait(response.headers)
        then = (
            f"the client retries with backoff (attempt {retry + 2} of {attempts} next{asked})"
            if left > 0
            else f"no retries left after {attempts} attempt{'s' * (attempts > 1)}"
        )
        await _report(f"the model endpoint answered {status} {reason}; {then}")
        reporter = _waits.get()
        if reporter is not None:
            reporter.status_reported = left > 0


def _take_chunk(chunk: ChatCompletionChunk, result: ChatResult, calls: dict[int, ToolCall]) -> str:
    """Fold one chunk into `result` and `calls`; return its text."""
    if chunk.usage is not None:
        result.input_tokens = chunk.usage.prompt_tokens
        result.output_tokens = chunk.usage.completion_tokens
    text = ""
    for choice in chunk.choices:
        if choice.index != 0:
            continue
        delta = choice.delta
        if choice.finish_reason:
            result.finish_reason = choice.finish_reason
        if delta.content:
            text += delta.content
        if delta.refusal:
            result.refusal += delta.refusal
        for piece in delta.tool_calls or ():
            call = calls.setdefault(piece.index, ToolCall(id="", name="", arguments=""))
            if piece.id:
                call.id = piece.id
            if piece.function is not None:
                if piece.function.name:
                    call.name += piece.function.name
                if piece.function.arguments:
                    call.arguments += piece.function.arguments
    result.content += text
    return text


def _asked_wait(headers: httpx2.Headers) -> str:
    """Return ", the endpoint asks for 2 s" from a Retry-After header, or nothing."""
    for header, divisor in (("retry-after-ms", 1000), ("retry-after", 1)):
        try:
            seconds = float(headers.get(header, "")) / divisor
        except ValueError:
            continue
        if seconds >= 1:
            return f", the endpoint asks for {seconds:g} s"
    return ""


def _retry_count(request: httpx2.Request) -> int:
    try:
        return int(request.headers.get("x-stainless-retry-count", "0"))
    except ValueError:
        return 0


def _endpoint_message(error: openai.APIError) -> str:
    body = error.body
    if isinstance(body, dict):
        message = body.get("message")
        if isinstance(message, str) and message:
            return message
    return error.message


_FORMAT_WORDS = ("response_format", "json_schema", "json_object", "tool_choice", "structured")


def _about_format(error: openai.BadRequestError) -> bool:
    """Tell whether a 400 is about the response format or the tool choice: OpenAI names it
    in `param`; vLLM, Ollama and llama.cpp's server only in the message."""
    body = error.body if isinstance(error.body, dict) else {}
    param = body.get("param")
    text = f"{param or ''} {_endpoint_message(error)}".lower()
    return any(word in text for word in _FORMAT_WORDS)


def _elapsed_ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
