"""Decoding requests in the servicers' stead, so a malformed one is INVALID_ARGUMENT."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import message

from mitosis.rpc.interceptors import Behaviour, Continuation, ServerInterceptor

if TYPE_CHECKING:
    from mitosis.rpc.interceptors import Handler

Context = grpc.aio.ServicerContext[Any, Any]


class MalformedRequestInterceptor(ServerInterceptor):
    """Answers INVALID_ARGUMENT, naming the method, to a request that is not a valid message.

    gRPC decodes a request before any servicer code runs and reports a failure to decode
    (bad UTF-8 in a string field, a truncated varint) as UNKNOWN. This interceptor takes
    the decoding of single-request calls over, so the caller is told what it did wrong.
    Put it after the authentication interceptor: a caller without a key hears only that.
    """

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        decode = _Decoder(details.method, handler.request_deserializer)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _streaming(handler.unary_stream, decode),
                response_serializer=handler.response_serializer,
            )
        assert handler.unary_unary is not None
        return grpc.unary_unary_rpc_method_handler(
            _unary(handler.unary_unary, decode),
            response_serializer=handler.response_serializer,
        )


class _Decoder:
    """Turns a call's request bytes into its message, or ends the call INVALID_ARGUMENT."""

    def __init__(self, method: str, deserializer: Callable[[bytes], Any]) -> None:
        self._method = method
        self._deserializer = deserializer

    async def __call__(self, request: bytes, context: Context) -> Any:
        try:
            return self._deserializer(request)
        except message.DecodeError as error:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request to {self._method} is not a valid protobuf message: {error}",
            )


def _unary(behaviour: Behaviour, decode: _Decoder) -> Behaviour:
    async def unary(request: bytes, context: Context) -> Any:
        return await behaviour(await decode(request, context), context)

    return unary


def _streaming(behaviour: Behaviour, decode: _Decoder) -> Behaviour:
    async def streaming(request: bytes, context: Context) -> AsyncIterator[Any]:
        result = behaviour(await decode(request, context), context)
        if isinstance(result, AsyncIterator):
            async for response in result:
                yield response
        else:  # a coroutine that writes with context.write, like health's Watch
            await result

    return streaming
