"""TaskService on the wire: translates messages and the calling key to Tasks calls.

A MitosisError raised below becomes its status in mitosis.rpc.interceptors.ErrorStatusInterceptor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import empty_pb2

from mitosis.executor.store.encoded import serialize_watch_response, watch_response
from mitosis.executor.tasks import Tasks
from mitosis.rpc.auth import current_caller
from mitosis.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc

Context = grpc.aio.ServicerContext[object, object]


def add_task_service(servicer: TaskServicer, server: grpc.aio.Server) -> None:
    """Serve TaskService; WatchTask's messages go out as the bytes the servicer made from
    events encoded once (encoded.watch_response), not encoded again for each watcher."""
    registrar: Any = _EncodedWatch(server)
    task_service_pb2_grpc.add_TaskServiceServicer_to_server(servicer, registrar)


class _EncodedWatch:
    """The server as the generated registration sees it, with WatchTask's serialiser swapped."""

    def __init__(self, server: Any) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # add_registered_method_handlers registers the same methods, once

    def add_registered_method_handlers(self, service: str, methods: dict[str, Any]) -> None:
        watch = methods["WatchTask"]._replace(response_serializer=serialize_watch_response)
        methods = {**methods, "WatchTask": watch}
        generic = grpc.method_handlers_generic_handler(service, methods)
        self._server.add_generic_rpc_handlers((generic,))
        self._server.add_registered_method_handlers(service, methods)


class TaskServicer(task_service_pb2_grpc.TaskServiceServicer):
    """Serves TaskService from a Tasks instance."""

    def __init__(self, tasks: Tasks) -> None:
        self._tasks = tasks

    async def CreateTask(
        self, request: task_service_pb2.CreateTaskRequest, context: Context
    ) -> task_pb2.Task:
        return await self._tasks.create(
            request.text, request.require_approval, current_caller(), request.request_id
        )

    async def GetTask(
        self, request: task_service_pb2.GetTaskRequest, context: Context
    ) -> task_pb2.Task:
        return await self._tasks.get(request.task_id, current_caller())

    async def ListTasks(
        self, request: task_service_pb2.ListTasksRequest, context: Context
    ) -> task_service_pb2.ListTasksResponse:
        tasks, next_token = await self._tasks.list(
            request.page_size, request.page_token, current_caller(), request.view
        )
        return task_service_pb2.ListTasksResponse(tasks=tasks, next_page_token=next_token)

    async def CancelTask(
        self, request: task_service_pb2.CancelTaskRequest, context: Context
    ) -> task_pb2.Task:
        return await self._tasks.cancel(request.task_id, current_caller())

    async def DeleteTask(
        self, request: task_service_pb2.DeleteTaskRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._tasks.delete(request.task_id, current_caller())
        return empty_pb2.Empty()

    async def WatchTask(  # type: ignore[override]  # bytes: see add_task_service
        self, request: task_service_pb2.WatchTaskRequest, context: Context
    ) -> AsyncIterator[bytes]:
        # The response's bytes, made from each event's bytes: see add_task_service.
        max_wait = request.max_wait.ToTimedelta().total_seconds() or None
        batches = self._tasks.watch(request.task_id, request.after_seq, current_caller(), max_wait)
        async for events in batches:
            yield watch_response(events)

    async def ApprovePlan(
        self, request: task_service_pb2.ApprovePlanRequest, context: Context
    ) -> task_pb2.Task:
        plan = request.plan if request.HasField("plan") else None
        return await self._tasks.approve(request.task_id, plan, current_caller())

    async def ReadArtifact(
        self, request: task_service_pb2.ReadArtifactRequest, context: Context
    ) -> AsyncIterator[task_service_pb2.ReadArtifactResponse]:
        chunks = self._tasks.read_artifact(
            request.task_id, request.path, current_caller(), request.read_offset
        )
        async for offset, data in chunks:
            yield task_service_pb2.ReadArtifactResponse(offset=offset, data=data)
