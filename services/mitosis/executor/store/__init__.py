"""Where tasks and their event logs live: the interface (`base`), one module per store.

- `base`: the `Store` protocol, its preconditions (`Expect`, `Refused`, `TaskEnded`) and
  errors (`LeaseLost`, `StoreUnavailable`).
- `sqlite`: the embedded store (the default); `redis`: the shared one, for several executors.
- `encoded`: stored events as their bytes, serialised once, and WatchTask's messages made of
  them.
- `opening`: a store from a `--store` value; `retention`: deleting finished tasks.
"""

from mitosis.executor.store.base import (
    Change,
    Expect,
    LeaseLost,
    Refused,
    Store,
    StoreUnavailable,
    TaskEnded,
    TaskPage,
)
from mitosis.executor.store.opening import open_store

__all__ = [
    "Change",
    "Expect",
    "LeaseLost",
    "Refused",
    "Store",
    "StoreUnavailable",
    "TaskEnded",
    "TaskPage",
    "open_store",
]
