"""Server interceptors' common part: wrapping a method's behaviour; MitosisError as a status
(with its reason as a google.rpc.ErrorInfo)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from mitosis.errors import MODEL_UNAVAILABLE, MitosisError, error_status
from mitosis.validation import status_message

logger = logging.getLogger(__name__)

RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"
"""A trailer gRPC clients read before retrying: a negative value asks them not to."""

Behaviour = Callable[..., Any]
"""A method's implementation: (request, context) -> response, or an async iterator of them."""
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable["Handler"]]

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
    ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    ServerInterceptor = grpc.aio.ServerInterceptor  # generic in the stubs only


def wrap_handler(handler: Handler, wrap: Callable[[Behaviour], Behaviour]) -> Handler:
    """Return the handler with its behaviour wrapped, serialisers kept."""
    serialisers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), **serialisers)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream), **serialisers)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), **serialisers)
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream), **serialisers)


def service_of(method: str) -> str:
    """Return the service of a full method name: "/pkg.Service/Method" -> "pkg.Service"."""
    return method.lstrip("/").split("/", 1)[0]


def is_ours(method: str) -> bool:
    """Whether a full method name is one of Mitosis's own services (not health, reflection)."""
    return service_of(method).startswith("mitosis.")


def prepared(handler: Handler, prepare: Callable[[Any], None]) -> Handler:
    """Return the handler with `prepare(context)` run first in each call.

    It runs in the call's own task, so a context variable it sets holds for the whole call.
    For our own services' methods: unary ones, and streaming ones that are async generators.
    """

    def wrap(behaviour: Behaviour) -> Behaviour:
        if handler.response_streaming:

            async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
                prepare(context)
                async for response in behaviour(request, context):
                    yield response

            return streaming

        async def unary(request: Any, context: Any) -> Any:
            prepare(context)
            return await behaviour(request, context)

        return unary

    return wrap_handler(handler, wrap)


class ErrorStatusInterceptor(ServerInterceptor):
    """Ends a call that raised a MitosisError with its status, message and reason.

    Servicers then only translate messages. Any other exception is a bug: it is logged with
    its traceback and the call ends INTERNAL with a plain message and the request id, never
    grpc's default UNKNOWN "Unexpected <class ...>", which names Python classes.
    """

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(details)
        # Only our own services raise MitosisError (health's Watch, for one, is no generator).
        if handler is None or not is_ours(details.method):
            return handler
        return wrap_handler(
            handler, _streaming_statuses if handler.response_streaming else _unary_statuses
        )


def _unary_statuses(behaviour: Behaviour) -> Behaviour:
    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behaviour(request, context)
        except MitosisError as error:
            await _abort(context, error)
        except grpc.aio.AbortError:
            raise  # the call was already ended with its status
        except Exception:
            await _abort_unexpected(context)

    return unary


def _streaming_statuses(behaviour: Behaviour) -> Behaviour:
    async def streaming(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            async for response in behaviour(request, context):
                yield response
        except MitosisError as error:
            await _abort(context, error)
        except grpc.aio.AbortError:
            raise  # the call was already ended with its status
        except Exception:
            await _abort_unexpected(context)

    return streaming


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: MitosisError) -> None:
    message = status_message(str(error))
    trailer: tuple[tuple[str, str | bytes], ...] = error_status(
        error.code, message, error.reason, error.metadata
    )
    if error.reason == MODEL_UNAVAILABLE:
        # The model client has already retried; gRPC's retry policy must not multiply that.
        trailer = (*trailer, (RETRY_PUSHBACK_KEY, "-1"))
    await context.abort(error.code, message, trailing_metadata=trailer)


async def _abort_unexpected(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    # The log line carries the call's request id, which the caller got as a trailer.
    logger.exception("the call failed on an unexpected error")
    await context.abort(
        grpc.StatusCode.INTERNAL, "internal error in the service; its log has the details"
    )
