"""A task's event log as it is written and watched.

- `log`: appending — stored first, then offered to live watchers.
- `hub`: live fan-out to watchers, each with a bounded buffer.
- `watch`: WatchTask's algorithm (replay, then live; batches; the bounded form).
- `live_feed`: events other executors append, read from Redis into the hub.
"""
