"""The executor's health as its dependencies make it: NOT_SERVING while the store, the
planner or the model server cannot be reached, or the data folder is full; SERVING again
once all is well.

Only the named services (TaskService) change; the server's overall status ("") stays
SERVING while the process runs, so a liveness probe does not restart an executor that
merely waits for Redis, while a balancer (Envoy checks TaskService) sends its calls elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mitosis.errors import MitosisError
from mitosis.executor.store.base import Store

logger = logging.getLogger(__name__)

Check = Callable[[], Awaitable[None]]
"""Returns when the dependency answers; raises (anything) when it does not."""

PROBE_TASK_ID = "0" * 16
"""A well-formed task id no task has (ids are random): reading it is the cheapest store query."""


MIN_FREE_BYTES = 1024 * 1024
"""Less free space than this in the data folder is a full folder: the store's next writes
would fail ("database or disk is full")."""


class Unhealthy(Exception):
    """A dependency that answers but cannot serve; the message says why, whole."""


def space_check(folder: Path, min_free: int = MIN_FREE_BYTES) -> Check:
    """Return a check that the data folder has at least `min_free` bytes free."""

    async def check() -> None:
        free = (await asyncio.to_thread(shutil.disk_usage, _existing(folder))).free
        if free < min_free:
            raise Unhealthy(
                f"the data folder {folder} is full ({free:,} bytes free); free space there"
            )

    return check


def _existing(folder: Path) -> Path:
    """The folder, or the nearest of its parents that exists (made later, on the same disk)."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return folder


def model_check(probe: Check) -> Check:
    """Return a check that the model server answers; its error says where and what to check."""

    async def check() -> None:
        try:
            await probe()
        except MitosisError as error:
            raise Unhealthy(str(error)) from None

    return check


def store_check(store: Store) -> Check:
    """Return a check that reads a task record from the store."""

    async def check() -> None:
        await store.get_task(PROBE_TASK_ID)

    return check


def planner_check(channel: grpc.aio.Channel, service: str, timeout: float) -> Check:
    """Return a check that asks the planner's grpc.health.v1 for SERVING of `service`."""
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service=service)

    async def check() -> None:
        try:
            reply = await stub.Check(request, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            raise ConnectionError(f"{error.code().name}: {error.details()}") from None
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            raise ConnectionError(f"it reports {status}")

    return check


class HealthProbe:
    """Checks each dependency every `interval` seconds and sets the services' status.

    `reachable` holds the outcome of the latest check of each dependency (for metrics).
    """

    def __init__(
        self,
        health: Any,
        service_names: Iterable[str],
        checks: Mapping[str, Check],
        *,
        interval: float = 5.0,
        timeout: float = 3.0,
    ) -> None:
        self._health = health  # grpc_health's aio HealthServicer (untyped)
        self._service_names = list(service_names)
        self._checks = dict(checks)
        self._interval = interval
        self._timeout = timeout
        self.reachable: dict[str, bool] = dict.fromkeys(self._checks, True)
        self._failing: dict[str, str] = {}

    async def run(self) -> None:
        """Check now and then every interval, until cancelled."""
        while True:
            await self.check_once()
            await asyncio.sleep(self._interval)

    async def check_once(self) -> bool:
        """Check every dependency at once, set the status if it changed; True when all answer."""
        names = list(self._checks)
        outcomes = await asyncio.gather(*(self._check(name) for name in names))
        failing = {name: why for name, why in zip(names, outcomes, strict=True) if why is not None}
        for name in names:
            self.reachable[name] = name not in failing
        if failing.keys() != self._failing.keys():
            await self._set(failing)
        self._failing = failing
        return not failing

    async def _check(self, name: str) -> str | None:
        """Return what is wrong with the dependency, in words, or None when it answers."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._checks[name]()
        except TimeoutError:
            return f"the {name} is unreachable (no answer within {self._timeout:g} s)"
        except Unhealthy as error:
            return str(error)
        except Exception as error:  # whatever a client raises, the dependency is away
            return f"the {name} is unreachable ({str(error) or 'no reason given'})"
        return None

    async def _set(self, failing: Mapping[str, str]) -> None:
        if failing:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
            reasons = "; ".join(failing.values())
            logger.warning("NOT_SERVING: %s", reasons)
        else:
            status = health_pb2.HealthCheckResponse.SERVING
            names = [f"the {name}" for name in self._checks]
            listed = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]
            logger.info("SERVING: %s %s well again", listed, "are" if len(names) > 1 else "is")
        for service in self._service_names:
            await self._health.set(service, status)
