"""A page whose delta cannot be stored loses nothing silently: the writer is told."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mitosis.executor.events.hub import EventHub
from mitosis.executor.events.log import EventLog
from mitosis.executor.store.base import LeaseLost
from mitosis.executor.store.sqlite import SqliteStore
from mitosis.executor.tools.pages import PageWriter
from mitosis.v1 import task_pb2
from tests.support.waiting import eventually


async def test_a_delta_the_store_refuses_stops_the_writer_and_keeps_stream_and_file_equal(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "store.sqlite3")
    log = EventLog(store, EventHub())
    await store.create_task(task_pb2.Task(task_id="0123456789abcdef"))
    assert await store.acquire_lease("0123456789abcdef", "here", 60)
    log.fence("0123456789abcdef", "here")
    path = tmp_path / "page.md"
    page = PageWriter(log, "0123456789abcdef", 1, path, window=0.01)
    await page.open("Notes", 0, "page.md")
    stored = asyncio.Event()
    log.observers.append(lambda _task, _events: stored.set())
    await page.write("stored ")
    await stored.wait()  # the flusher stored it within its window

    # Another executor takes the task over: the next delta is fenced off.
    await store.release_lease("0123456789abcdef", "here")
    assert await store.acquire_lease("0123456789abcdef", "there", 60)
    await page.write("refused")
    assert isinstance(await refusal(page), LeaseLost)  # the flusher's failure, told
    with pytest.raises(LeaseLost):
        await page.finish()

    assert await streamed_text(store) == "stored "
    assert path.read_text() == "stored "  # the file holds only what the stream holds
    await store.close()


async def streamed_text(store: SqliteStore) -> str:
    events = await store.read_events("0123456789abcdef", 0, 100)
    return "".join(e.page_delta.text for e in events if e.WhichOneof("kind") == "page_delta")


async def refusal(page: PageWriter) -> Exception:
    """Return what the page's writer is told once its flusher could not store a delta."""

    async def told() -> Exception | None:
        try:
            await page.write("")
        except Exception as error:  # the test checks which
            return error
        return None

    return await eventually(told, interval=0.01, what="the writer is told a delta was lost")
