"""Events other executors append, read from Redis and offered to this executor's watchers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from mitosis.executor.events.hub import EventHub
from mitosis.executor.store.base import StoreUnavailable
from mitosis.executor.store.redis import RedisStore

logger = logging.getLogger(__name__)


class RedisFeed:
    """One XREAD loop over the streams of every task someone watches here.

    A watcher of a task that another executor runs gets its live events from this feed;
    the hub drops nothing and the watcher drops what it already has (by seq), so events
    this executor appended itself, offered twice, are harmless.
    """

    def __init__(self, store: RedisStore, hub: EventHub, *, block_ms: int = 500) -> None:
        self._store = store
        self._hub = hub
        self._block_ms = block_ms
        self._after: dict[str, int] = {}

    async def run(self) -> None:
        """Feed the hub until cancelled."""
        while True:
            self._follow(self._hub.watched())
            if not self._after:
                self._hub.changed.clear()
                await self._hub.changed.wait()
                continue
            self._hub.changed.clear()
            try:
                batches = await self._store.read_new_events(self._after, self._block_ms)
            except StoreUnavailable as error:
                logger.warning("live feed paused: %s", error)
                await asyncio.sleep(1)
                continue
            except Exception:  # the feed must outlive any one failure; watches poll meanwhile
                logger.exception("live feed: reading new events failed; trying again")
                await asyncio.sleep(1)
                continue
            for task_id, events in batches.items():
                if task_id in self._after and events:
                    self._after[task_id] = events[-1].seq
                    self._hub.publish(task_id, events)

    def _follow(self, watched: Mapping[str, int]) -> None:
        for task_id in list(self._after):
            if task_id not in watched:
                del self._after[task_id]
        for task_id, from_seq in watched.items():
            self._after.setdefault(task_id, from_seq)
