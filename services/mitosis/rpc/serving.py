"""What both services share when they serve: health, reflection, graceful stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mitosis.rpc.interceptors import ErrorStatusInterceptor, ServerInterceptor
from mitosis.rpc.request_decoding import MalformedRequestInterceptor

logger = logging.getLogger(__name__)

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class Serving:
    """A grpc.aio server with health and reflection, for the named services."""

    def __init__(
        self,
        service_names: Iterable[str],
        interceptors: Sequence[ServerInterceptor] = (),
    ) -> None:
        self.service_names = list(service_names)
        self.server = grpc.aio.server(
            # Outermost first: errors become statuses innermost, next to the servicer.
            interceptors=[*interceptors, MalformedRequestInterceptor(), ErrorStatusInterceptor()],
            options=[
                # Watchers sit on quiet streams; keep their connections alive through NATs.
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.max_receive_message_length", 1 << 20),
            ],
        )
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]  # re-exported, untyped
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [*self.service_names, HEALTH_SERVICE, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, self.server)

    def listen(self, address: str, credentials: grpc.ServerCredentials | None = None) -> int:
        """Bind the address (port 0 picks a free port), with TLS when given; return the port."""
        if credentials is None:
            port = self.server.add_insecure_port(address)
        else:
            port = self.server.add_secure_port(address, credentials)
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        return port

    async def start(self) -> None:
        """Start serving and report every service SERVING."""
        await self.server.start()
        for name in ["", *self.service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None) -> None:
        """Report NOT_SERVING first so balancers move on, then stop with a grace period."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def serve_until_signalled(
    serving: Serving, grace: float, on_stop: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully, then run `on_stop`."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    logger.info("stopping: NOT_SERVING, then up to %.0f s for calls in flight", grace)
    await serving.stop(grace)
    if on_stop is not None:
        await on_stop()
