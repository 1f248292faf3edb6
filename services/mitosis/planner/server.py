"""`mitosis-planner`: serve PlannerService."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from mitosis.models.base import PlanningModel
from mitosis.models.choice import OPENAI, OPENAI_API_KEY, add_model_arguments, openai_settings
from mitosis.models.offline import OfflineModel
from mitosis.models.openai_model import OpenAIModel
from mitosis.planner.metrics import PlannerMetrics
from mitosis.planner.servicer import PlannerServicer
from mitosis.rpc.auth import (
    ApiKeyInterceptor,
    KeysFileError,
    add_key_arguments,
    describe_keys,
    load_keys,
)
from mitosis.rpc.logs import RequestIdInterceptor, add_logging_arguments, configure_logging
from mitosis.rpc.metrics_server import MetricsServer, add_metrics_arguments, start_metrics_server
from mitosis.rpc.serving import Serving, add_grace_argument, serve_until_signalled
from mitosis.rpc.settings import add_environment_only, add_setting
from mitosis.rpc.tls import TlsConfigError, add_tls_arguments, server_credentials
from mitosis.v1 import planner_service_pb2, planner_service_pb2_grpc

logger = logging.getLogger("mitosis.planner")

SERVICE_NAME = planner_service_pb2.DESCRIPTOR.services_by_name["PlannerService"].full_name

_BACKGROUND: set[asyncio.Task[None]] = set()
"""One-off tasks started while serving, held so they are not collected before they end."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Return the planner's settings from flags, then MITOSIS_* variables, then defaults."""
    return argument_parser(os.environ).parse_args(argv)


def argument_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The planner's flags, each with its environment variable and default."""
    parser = argparse.ArgumentParser(
        prog="mitosis-planner", description="Serve mitosis.v1.PlannerService."
    )
    add_setting(
        parser,
        "--listen",
        "MITOSIS_PLANNER_LISTEN",
        env,
        default="127.0.0.1:50052",
        help="address to serve on",
    )
    add_model_arguments(parser, env)
    add_key_arguments(parser, env)
    add_tls_arguments(parser, env)
    add_grace_argument(parser, env)
    add_metrics_arguments(parser, env, example_port=9463)
    add_logging_arguments(parser, env)
    add_environment_only(parser, [OPENAI_API_KEY])
    return parser


@dataclass
class Planner:
    """A running planner: its server, its port, and the model it closes when it stops."""

    serving: Serving
    port: int
    close_model: Callable[[], Awaitable[None]]
    metrics: PlannerMetrics
    metrics_server: MetricsServer | None = None

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving (NOT_SERVING first), then close the model's connections."""
        await self.serving.stop(grace)
        await self.close()

    async def close(self) -> None:
        """Stop the metrics endpoint and close the model's connections."""
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        await self.close_model()


async def start_planner(args: argparse.Namespace) -> Planner:
    """Start serving PlannerService with the chosen model."""
    keys = load_keys(args, args.listen, "planner")
    tls = server_credentials(args)
    metrics = PlannerMetrics()
    # Outermost first: every call gets its request id and is counted, refused ones too.
    interceptors = [RequestIdInterceptor(), metrics.rpcs]
    if keys:
        interceptors.append(ApiKeyInterceptor(keys))
    serving = Serving([SERVICE_NAME], interceptors, keys=keys, label="planner")
    model: PlanningModel
    if args.model == OPENAI:
        openai_model = OpenAIModel(openai_settings(args, os.environ))
        model, close_model = openai_model, openai_model.aclose
    else:
        model, close_model = OfflineModel(), _nothing_to_close
    planner_service_pb2_grpc.add_PlannerServiceServicer_to_server(
        PlannerServicer(metrics.metered(model)), serving.server
    )
    port = serving.listen(args.listen, tls)
    await serving.start()
    if isinstance(model, OpenAIModel):
        # At start, once: say so when the model server cannot be reached (no task fails yet).
        warning = asyncio.create_task(model.warn_if_unreachable(), name="probe the model")
        _BACKGROUND.add(warning)
        warning.add_done_callback(_BACKGROUND.discard)
    metrics_server = None
    if args.metrics_listen:
        metrics_server = await start_metrics_server(args.metrics_listen, metrics.registry)
    logger.info(
        "planner serving on port %d (%s, %s); model %s",
        port,
        "TLS" if tls else "plaintext",
        describe_keys(keys),
        model.name,
    )
    return Planner(serving, port, close_model, metrics, metrics_server)


async def _nothing_to_close() -> None:
    return None


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGTERM or SIGINT."""
    planner = await start_planner(args)
    await serve_until_signalled(planner.serving, args.grace, planner.stop)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the planner service."""
    args = parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        asyncio.run(serve(args))
    except (KeysFileError, TlsConfigError) as error:
        raise SystemExit(f"mitosis-planner: {error}") from None
