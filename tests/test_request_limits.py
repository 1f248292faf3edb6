"""A request past the receive limit is refused with RESOURCE_EXHAUSTED, and nothing is lost."""

from __future__ import annotations

import grpc
import pytest

from mitosis.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc
from tests.support.watch import watch_all


async def test_a_request_over_one_mebibyte_is_resource_exhausted(
    stub: task_service_pb2_grpc.TaskServiceStub,
) -> None:
    before = await stub.CreateTask(task_service_pb2.CreateTaskRequest(text="Explain tides."))
    huge = task_service_pb2.CreateTaskRequest(text="x" * (1 << 20))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.CreateTask(huge)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (refused.value.details() or "")
    # The server still serves, the task created before runs to its end, and nothing was added.
    events = await watch_all(stub, before.task_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    task = await stub.GetTask(task_service_pb2.GetTaskRequest(task_id=before.task_id))
    assert task.state == task_pb2.Task.STATE_SUCCEEDED
    listed = await stub.ListTasks(task_service_pb2.ListTasksRequest())
    assert [t.task_id for t in listed.tasks] == [before.task_id]
