"""In-process executors for tests: the type of conftest's `start_executor_on` fixture."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from mitosis.executor.server import Executor

StartExecutor = Callable[..., Coroutine[Any, Any, Executor]]
"""`await start_executor_on(*flags, data_dir=...)`: an executor on a free port."""
