"""The executor's client of PlannerService: deadlines, and retries on UNAVAILABLE."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from mitosis.errors import MODEL_UNAVAILABLE, STATUS_DETAILS_KEY
from mitosis.v1 import plan_pb2, planner_service_pb2, planner_service_pb2_grpc

_SERVICE = planner_service_pb2.DESCRIPTOR.services_by_name["PlannerService"].full_name

# gRPC's own retry machinery: transparent to the caller, bounded, with jittered backoff.
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": _SERVICE}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "3s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


class PlanError(Exception):
    """The planner could not give a plan; the message says why in a person's words."""


class PlannerClient:
    """Asks the planner service for plans over one long-lived channel."""

    def __init__(
        self,
        target: str,
        *,
        deadline: float = 30.0,
        key: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        connect_wait: float = 30.0,
    ) -> None:
        self.target = target
        self._deadline = deadline
        self._connect_wait = min(connect_wait, deadline)
        # The executor's own credential, as metadata: grpc refuses call credentials on
        # plaintext channels, and a planner on loopback may well be plaintext.
        self._metadata = (("authorization", f"Bearer {key}"),) if key else ()
        options = [
            ("grpc.service_config", _SERVICE_CONFIG),
            ("grpc.enable_retries", 1),
            # Back within seconds of the planner's return, not after a backoff of minutes.
            ("grpc.max_reconnect_backoff_ms", 5_000),
        ]
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        else:
            self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        self._stub = planner_service_pb2_grpc.PlannerServiceStub(self._channel)

    @property
    def channel(self) -> grpc.aio.Channel:
        """The channel to the planner (the health probe checks the planner over it)."""
        return self._channel

    async def create_plan(self, task_text: str) -> plan_pb2.Plan:
        """Return the planner's plan for the task, or raise PlanError."""
        request = planner_service_pb2.CreatePlanRequest(task_text=task_text)
        await self._connected()
        try:
            return await self._stub.CreatePlan(
                request, timeout=self._deadline, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as error:
            raise PlanError(self._explain(error)) from error

    async def revise_plan(
        self, task_text: str, plan: plan_pb2.Plan, failed_step_index: int, failure: str
    ) -> plan_pb2.Plan:
        """Return the planner's revision of the remaining steps, or raise PlanError."""
        request = planner_service_pb2.RevisePlanRequest(
            task_text=task_text, plan=plan, failed_step_index=failed_step_index, failure=failure
        )
        await self._connected()
        try:
            return await self._stub.RevisePlan(
                request, timeout=self._deadline, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as error:
            raise PlanError(self._explain(error)) from error

    async def _connected(self) -> None:
        """Wait, up to connect_wait, for a connection to the planner, or raise PlanError.

        A planner that is restarting (`make run-cluster` starts a dead one again within
        seconds) delays the plan instead of failing the task: the calls themselves fail fast.
        """
        try:
            await asyncio.wait_for(self._channel.channel_ready(), self._connect_wait)
        except TimeoutError:
            raise PlanError(
                f"the planner at {self.target} is unreachable (no connection within"
                f" {self._connect_wait:g} s); is it running?"
            ) from None

    def _explain(self, error: grpc.aio.AioRpcError) -> str:
        code = error.code()
        if _reason(error) == MODEL_UNAVAILABLE:
            # The planner answered: it is its model server that cannot be reached.
            return f"UNAVAILABLE: {error.details()}"
        if code == grpc.StatusCode.UNAVAILABLE:
            return (
                f"the planner at {self.target} is unreachable ({error.details()}); is it running?"
            )
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"the planner at {self.target} gave no plan within {self._deadline:g} s"
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return (
                f"the planner at {self.target} refused the executor's credential"
                f" ({error.details()}); check the executor's --planner-key"
            )
        if code in _REFUSALS:
            return f"the planner refused the task: {code.name}: {error.details()}"
        return f"the planner could not plan the task: {code.name}: {error.details()}"

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close(None)


_REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)
"""The planner's answers that are refusals of the task; any other is a failure to plan."""


def _reason(error: grpc.aio.AioRpcError) -> str | None:
    """Return the reason of the ErrorInfo in the planner's status details, if any."""
    trailers: Iterable[Any] = error.trailing_metadata() or ()  # (key, value) pairs
    for key, value in trailers:
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            return None
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return info.reason
    return None
