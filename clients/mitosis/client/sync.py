"""The synchronous client: an AsyncClient run on a private event loop in a background thread."""

from __future__ import annotations

import asyncio
import queue
import random
import threading
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from mitosis.client.aio import AsyncClient, StateCallback
from mitosis.client.settings import ClientSettings
from mitosis.v1 import plan_pb2, task_pb2, task_service_pb2

_T = TypeVar("_T")


class Client:
    """A blocking client of TaskService with the same methods as AsyncClient.

    Callbacks (`on_state`) run in the thread that iterates the watch, not in the background
    thread. Use it as a context manager, or close() it.
    """

    def __init__(
        self,
        target: str,
        *,
        max_reconnect_wait: float = 5.0,
        reconnect_deadline: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        api_key: str | None = None,
        tls_ca: Path | str | None = None,
        stall_timeout: float = 35.0,
        call_timeout: float = 10.0,
        probe_timeout: float = 2.0,
        bounded_wait: float = 0.5,
        rand: Callable[[], float] = random.random,
    ) -> None:
        """Start the background loop; see AsyncClient for the arguments."""
        self._aio = AsyncClient(
            target,
            max_reconnect_wait=max_reconnect_wait,
            reconnect_deadline=reconnect_deadline,
            metadata=metadata,
            api_key=api_key,
            tls_ca=tls_ca,
            stall_timeout=stall_timeout,
            call_timeout=call_timeout,
            probe_timeout=probe_timeout,
            bounded_wait=bounded_wait,
            rand=rand,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="mitosis-client", daemon=True
        )
        self._thread.start()
        self._closed = False

    @classmethod
    def from_settings(cls, settings: ClientSettings, **options: Any) -> Client:
        """A client as `settings` say (see ClientSettings.load); `options` as for __init__."""
        return cls(settings.target, api_key=settings.api_key, tls_ca=settings.tls_ca, **options)

    def __repr__(self) -> str:
        return repr(self._aio).replace("AsyncClient", "Client", 1)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel and stop the background thread. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._aio.close())
            self._run(self._loop.shutdown_asyncgens())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def create_task(
        self, text: str, *, require_approval: bool = False, request_id: str | None = None
    ) -> task_pb2.Task:
        """Create a task and start it (or have it wait for approval once planned); a retry
        with the same `request_id` returns the same task. See AsyncClient.create_task."""
        return self._run(
            self._aio.create_task(text, require_approval=require_approval, request_id=request_id)
        )

    def approve_plan(self, task_id: str, plan: plan_pb2.Plan | None = None) -> task_pb2.Task:
        """Run a plan that awaits approval, as proposed or replaced by `plan`."""
        return self._run(self._aio.approve_plan(task_id, plan))

    def get_task(self, task_id: str) -> task_pb2.Task:
        """Get a task with its steps, pages and delivered files."""
        return self._run(self._aio.get_task(task_id))

    def list_tasks(
        self,
        page_size: int = 0,
        page_token: str = "",
        *,
        view: task_pb2.Task.View.ValueType = task_pb2.Task.VIEW_BASIC,
    ) -> task_service_pb2.ListTasksResponse:
        """List tasks, newest first, one page at a time; see AsyncClient.list_tasks."""
        return self._run(self._aio.list_tasks(page_size, page_token, view=view))

    def cancel_task(self, task_id: str) -> task_pb2.Task:
        """Cancel a running task."""
        return self._run(self._aio.cancel_task(task_id))

    def delete_task(self, task_id: str) -> None:
        """Delete a task with its events and files, cancelling it first if it runs."""
        self._run(self._aio.delete_task(task_id))

    def watch(
        self,
        task_id: str,
        after_seq: int = 0,
        *,
        include_heartbeats: bool = False,
        on_state: StateCallback | None = None,
        bounded: bool | None = None,
    ) -> Generator[task_pb2.TaskEvent, None, None]:
        """Yield the task's events with `seq > after_seq`, each once and in order, to the end.

        See AsyncClient.watch, bounded calls included."""
        inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        events = self._aio.watch(
            task_id,
            after_seq,
            include_heartbeats=include_heartbeats,
            on_state=None if on_state is None else lambda state: inbox.put(("state", state)),
            bounded=bounded,
        )
        return self._iterate(events, inbox, on_state)

    def read_artifact(
        self, task_id: str, path: str, *, offset: int = 0
    ) -> Generator[bytes, None, None]:
        """Yield the bytes of a delivered file, chunk by chunk."""
        return self._iterate(
            self._aio.read_artifact(task_id, path, offset=offset), queue.SimpleQueue(), None
        )

    def download_artifacts(
        self, task_id: str, out_dir: Path | str, *, overwrite: bool = True
    ) -> list[Path]:
        """Write every artifact of the task under out_dir; see AsyncClient.download_artifacts."""
        return self._run(self._aio.download_artifacts(task_id, out_dir, overwrite=overwrite))

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:  # e.g. KeyboardInterrupt while waiting: stop the call too
            future.cancel()
            raise

    def _iterate(
        self,
        source: AsyncGenerator[_T, None],
        inbox: queue.SimpleQueue[tuple[str, Any]],
        on_state: StateCallback | None,
    ) -> Generator[_T, None, None]:
        """Pull items one at a time from an async generator on the loop, relaying states here.

        `inbox` carries ("state", text) from the generator's callback and the outcome of each
        pull, so callbacks run in this thread while it waits.
        """
        pulling: list[asyncio.Task[Any]] = []

        async def pull() -> None:
            pulling[:] = [t for t in (asyncio.current_task(),) if t is not None]
            try:
                inbox.put(("item", await anext(source)))
            except StopAsyncIteration:
                inbox.put(("end", None))
            except BaseException as error:
                inbox.put(("error", error))
                if isinstance(error, asyncio.CancelledError):
                    raise

        async def shutdown() -> None:
            # An interrupted pull must finish before the generator can be closed.
            for task in pulling:
                if not task.done():
                    task.cancel()
                    await asyncio.wait([task])
            await source.aclose()

        try:
            while True:
                asyncio.run_coroutine_threadsafe(pull(), self._loop)
                kind, payload = inbox.get()
                while kind == "state":
                    if on_state is not None:
                        on_state(payload)
                    kind, payload = inbox.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise payload
                yield payload
        finally:
            if not self._closed:
                self._run(shutdown())
