"""Reading WatchTask calls event by event: each message carries a batch of events."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator

import grpc

from mitosis.executor.store.encoded import EncodedEvent
from mitosis.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc

WatchCall = grpc.aio.UnaryStreamCall[
    task_service_pb2.WatchTaskRequest, task_service_pb2.WatchTaskResponse
]


class EventReader:
    """One WatchTask call read one event at a time; `read()` is None once the stream ended."""

    def __init__(self, call: WatchCall) -> None:
        self.call = call
        self._pending: deque[task_pb2.TaskEvent] = deque()

    async def read(self) -> task_pb2.TaskEvent | None:
        """Return the next event (heartbeats included), or None after the last message."""
        while not self._pending:
            message = await self.call.read()
            if not isinstance(message, task_service_pb2.WatchTaskResponse):  # grpc.aio.EOF
                return None
            self._pending.extend(message.events)
        return self._pending.popleft()

    def __aiter__(self) -> AsyncIterator[task_pb2.TaskEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[task_pb2.TaskEvent]:
        while (event := await self.read()) is not None:
            yield event

    def cancel(self) -> bool:
        """Cancel the call."""
        return self.call.cancel()


def each_event(call: WatchCall) -> EventReader:
    """The call's events one by one: `async for event in each_event(stub.WatchTask(...))`."""
    return EventReader(call)


def is_heartbeat(event: task_pb2.TaskEvent) -> bool:
    """Return True for a heartbeat (not stored; it carries the newest seq)."""
    return event.WhichOneof("kind") == "heartbeat"


async def flat(batches: AsyncIterator[list[EncodedEvent]]) -> AsyncIterator[task_pb2.TaskEvent]:
    """The events of watch_batches (the executor's watch, in process) one by one, parsed."""
    async for batch in batches:
        for event in batch:
            yield event.event()


async def watch_all(
    stub: task_service_pb2_grpc.TaskServiceStub, task_id: str, after_seq: int = 0
) -> list[task_pb2.TaskEvent]:
    """Return every stored event the watch delivers until it ends, heartbeats left out."""
    request = task_service_pb2.WatchTaskRequest(task_id=task_id, after_seq=after_seq)
    return [
        event
        async for event in each_event(stub.WatchTask(request, timeout=60))
        if event.WhichOneof("kind") != "heartbeat"
    ]
