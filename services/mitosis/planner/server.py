"""`mitosis-planner`: serve PlannerService."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Sequence

from mitosis.models.base import PlanningModel
from mitosis.models.choice import OPENAI, add_model_arguments, openai_settings
from mitosis.models.offline import OfflineModel
from mitosis.models.openai_model import OpenAIModel
from mitosis.planner.servicer import PlannerServicer
from mitosis.serving import Serving, configure_logging, serve_until_signalled
from mitosis.v1 import planner_service_pb2, planner_service_pb2_grpc

logger = logging.getLogger("mitosis.planner")

SERVICE_NAME = planner_service_pb2.DESCRIPTOR.services_by_name["PlannerService"].full_name


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Return the planner's settings from flags, then MITOSIS_* variables, then defaults."""
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="mitosis-planner", description="Serve mitosis.v1.PlannerService."
    )
    parser.add_argument(
        "--listen",
        default=env("MITOSIS_PLANNER_LISTEN", "127.0.0.1:50052"),
        help="address to serve on (env MITOSIS_PLANNER_LISTEN; default %(default)s)",
    )
    add_model_arguments(parser, os.environ)
    parser.add_argument(
        "--grace", type=float, default=5.0, help="seconds to finish calls on SIGTERM"
    )
    parser.add_argument("--log-level", default=env("MITOSIS_LOG_LEVEL", "info"))
    return parser.parse_args(argv)


async def start_planner(args: argparse.Namespace) -> tuple[Serving, int]:
    """Start serving PlannerService; return the server and its port."""
    serving = Serving([SERVICE_NAME])
    model: PlanningModel = (
        OpenAIModel(openai_settings(args, os.environ)) if args.model == OPENAI else OfflineModel()
    )
    planner_service_pb2_grpc.add_PlannerServiceServicer_to_server(
        PlannerServicer(model), serving.server
    )
    port = serving.listen(args.listen)
    await serving.start()
    logger.info("planner serving on port %d; model %s", port, model.name)
    return serving, port


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGTERM or SIGINT."""
    serving, _ = await start_planner(args)
    await serve_until_signalled(serving, args.grace)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the planner service."""
    args = parse_args(argv)
    configure_logging(args.log_level)
    asyncio.run(serve(args))
