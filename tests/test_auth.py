"""API keys: a keyed executor lets in only known keys, and each key sees only its own tasks."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mitosis.executor.server import Executor
from mitosis.rpc.auth import KeyRing, KeysFileError, hash_key, is_loopback, key_line, keygen_main
from mitosis.v1 import plan_pb2, task_pb2, task_service_pb2, task_service_pb2_grpc
from tests.support.executors import StartExecutor
from tests.support.waiting import eventually
from tests.support.watch import WatchCall, each_event

Metadata = tuple[tuple[str, str], ...]

ALICE_KEY = "mk_alice-test-key-0000000000000000000000000000"
BOB_KEY = "mk_bob-test-key-11111111111111111111111111111111"
ALICE: Metadata = (("authorization", f"Bearer {ALICE_KEY}"),)
BOB: Metadata = (("authorization", f"Bearer {BOB_KEY}"),)


def test_a_keys_file_is_read_by_hash_and_names_its_keys() -> None:
    keys = KeyRing.parse(
        f"# team keys\n{key_line('alice', ALICE_KEY)}\n\nbob {hash_key(BOB_KEY)}\n"
    )
    assert keys.names == {"alice", "bob"}
    assert keys.name_for(ALICE_KEY) == "alice"
    assert keys.name_for(BOB_KEY) == "bob"
    assert keys.name_for("mk_nobody") is None
    assert keys.authenticate([("authorization", f"bearer {BOB_KEY}")]) == "bob"
    with pytest.raises(PermissionError, match="needs an API key"):
        keys.authenticate([("x-other", "y")])
    with pytest.raises(PermissionError, match="unknown API key"):
        keys.authenticate([("authorization", "Bearer mk_guess")])
    with pytest.raises(PermissionError, match="needs an API key"):
        keys.authenticate([("authorization", f"Basic {ALICE_KEY}")])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice sha256:abc\n", r"keys:1: expected `NAME sha256:<64 hex digits>`"),
        ("alice " + ALICE_KEY + "\n", r"keys:1: expected"),
        (f"{key_line('a', ALICE_KEY)}\n{key_line('a', BOB_KEY)}\n", "keys:2: the name 'a'"),
        (f"{key_line('a', ALICE_KEY)}\n{key_line('b', ALICE_KEY)}\n", "keys:2: the same key"),
        ("# nothing\n\n", "no keys in it"),
    ],
)
def test_a_bad_keys_file_is_refused_with_its_line(text: str, message: str) -> None:
    with pytest.raises(KeysFileError, match=message):
        KeyRing.parse(text, "keys")


def test_keygen_prints_the_key_once_and_stores_only_its_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys_file = tmp_path / "keys"
    keygen_main(["alice", "--keys-file", str(keys_file)])
    key = capsys.readouterr().out.strip()
    assert key.startswith("mk_")
    assert key not in keys_file.read_text()
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert KeyRing.load(keys_file).name_for(key) == "alice"
    with pytest.raises(SystemExit):
        keygen_main(["alice", "--keys-file", str(keys_file)])
    assert "already has a key named 'alice'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.3.2.1:0", True),
        ("localhost:1", True),
        ("[::1]:50051", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        ("10.0.0.5:50051", False),
        ("example.org:443", False),
    ],
)
def test_loopback_addresses_are_told_apart(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "api-keys"
    path.write_text(f"{key_line('alice', ALICE_KEY)}\n{key_line('bob', BOB_KEY)}\n")
    return path


@pytest.fixture
async def keyed(start_executor_on: StartExecutor, keys_file: Path) -> Executor:
    return await start_executor_on(f"--api-keys={keys_file}")


@pytest.fixture
async def stub(keyed: Executor) -> AsyncIterator[task_service_pb2_grpc.TaskServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{keyed.port}") as channel:
        yield task_service_pb2_grpc.TaskServiceStub(channel)


async def finished(
    stub: task_service_pb2_grpc.TaskServiceStub, task_id: str, who: Metadata
) -> task_pb2.Task:
    request = task_service_pb2.WatchTaskRequest(task_id=task_id)
    async for _ in each_event(stub.WatchTask(request, metadata=who, timeout=60)):
        pass
    return await stub.GetTask(task_service_pb2.GetTaskRequest(task_id=task_id), metadata=who)


def every_call(stub: task_service_pb2_grpc.TaskServiceStub, task_id: str, who: Metadata) -> dict:  # type: ignore[type-arg]
    """Each TaskService method on `task_id`, as a coroutine factory."""

    async def watch() -> None:
        request = task_service_pb2.WatchTaskRequest(task_id=task_id)
        async for _ in each_event(stub.WatchTask(request, metadata=who, timeout=10)):
            pass

    async def read() -> None:
        request = task_service_pb2.ReadArtifactRequest(task_id=task_id, path="report.md")
        async for _ in stub.ReadArtifact(request, metadata=who, timeout=10):
            pass

    return {
        "GetTask": lambda: stub.GetTask(
            task_service_pb2.GetTaskRequest(task_id=task_id), metadata=who
        ),
        "CancelTask": lambda: stub.CancelTask(
            task_service_pb2.CancelTaskRequest(task_id=task_id), metadata=who
        ),
        "ApprovePlan": lambda: stub.ApprovePlan(
            task_service_pb2.ApprovePlanRequest(task_id=task_id), metadata=who
        ),
        "WatchTask": watch,
        "ReadArtifact": read,
    }


async def test_calls_without_a_known_key_are_unauthenticated(
    stub: task_service_pb2_grpc.TaskServiceStub,
) -> None:
    no_key: Metadata = ()
    wrong: Metadata = (("authorization", "Bearer mk_not-a-key"),)
    for who, message in [(no_key, "needs an API key"), (wrong, "unknown API key")]:
        with pytest.raises(grpc.aio.AioRpcError) as created:
            await stub.CreateTask(task_service_pb2.CreateTaskRequest(text="x"), metadata=who)
        assert created.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert message in (created.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as listed:
            await stub.ListTasks(task_service_pb2.ListTasksRequest(), metadata=who)
        assert listed.value.code() == grpc.StatusCode.UNAUTHENTICATED
        for name, call in every_call(stub, "0123456789abcdef", who).items():
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call()
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, name


async def test_health_stays_open_without_a_key(keyed: Executor) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{keyed.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        response = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_task_belongs_to_the_key_that_created_it(
    stub: task_service_pb2_grpc.TaskServiceStub,
) -> None:
    created = await stub.CreateTask(
        task_service_pb2.CreateTaskRequest(text="Write a short report on tides."), metadata=ALICE
    )
    assert created.owner == "alice"
    task = await finished(stub, created.task_id, ALICE)
    assert task.state == task_pb2.Task.STATE_SUCCEEDED
    assert task.artifacts, "the task should have delivered a file for ReadArtifact"

    for name, call in every_call(stub, created.task_id, BOB).items():
        with pytest.raises(grpc.aio.AioRpcError) as hidden:
            await call()
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND, name
        assert "does not exist" in (hidden.value.details() or ""), name

    bobs = await stub.ListTasks(task_service_pb2.ListTasksRequest(), metadata=BOB)
    assert [t.task_id for t in bobs.tasks] == []
    alices = await stub.ListTasks(task_service_pb2.ListTasksRequest(), metadata=ALICE)
    assert [t.task_id for t in alices.tasks] == [created.task_id]
    path = task.artifacts[0].path
    request = task_service_pb2.ReadArtifactRequest(task_id=created.task_id, path=path)
    data = b"".join([c.data async for c in stub.ReadArtifact(request, metadata=ALICE)])
    assert len(data) == task.artifacts[0].size_bytes


async def test_unfinished_tasks_per_key_are_limited(
    start_executor_on: StartExecutor, keys_file: Path
) -> None:
    executor = await start_executor_on(f"--api-keys={keys_file}", "--max-tasks-per-key=1")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{executor.port}") as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        waiting = task_service_pb2.CreateTaskRequest(text="Plan a garden.", require_approval=True)
        first = await stub.CreateTask(waiting, metadata=ALICE)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateTask(waiting, metadata=ALICE)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "the most one key may have (1)" in (refused.value.details() or "")
        # Another key is not held back by Alice's tasks.
        await stub.CreateTask(waiting, metadata=BOB)
        # Once Alice's task has ended she may create the next.
        await stub.CancelTask(
            task_service_pb2.CancelTaskRequest(task_id=first.task_id), metadata=ALICE
        )
        await stub.CreateTask(waiting, metadata=ALICE)
        listed = await stub.ListTasks(task_service_pb2.ListTasksRequest(), metadata=ALICE)
        assert len(listed.tasks) == 2


async def test_watchers_per_task_are_limited(
    start_executor_on: StartExecutor, keys_file: Path
) -> None:
    executor = await start_executor_on(f"--api-keys={keys_file}", "--max-watchers-per-task=1")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{executor.port}") as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        request = task_service_pb2.CreateTaskRequest(text="Plan a garden.", require_approval=True)
        task = await stub.CreateTask(request, metadata=ALICE)
        watch = task_service_pb2.WatchTaskRequest(task_id=task.task_id)
        first = stub.WatchTask(watch, metadata=ALICE)
        await first.read()  # the first watcher is counted once its stream runs
        second = stub.WatchTask(watch, metadata=ALICE)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await second.read()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "already has 1 watcher," in (refused.value.details() or "")
        first.cancel()
        # The count drops when the first stream ends; a new watcher then gets the whole log.

        async def admitted() -> tuple[WatchCall, object] | None:
            third = stub.WatchTask(watch, metadata=ALICE)
            outcome = await first_event(third)
            return None if outcome == grpc.StatusCode.RESOURCE_EXHAUSTED else (third, outcome)

        third, outcome = await eventually(admitted, what="a new watcher is admitted")
        third.cancel()
        assert isinstance(outcome, task_pb2.TaskEvent), outcome
        assert outcome.seq == 1


async def first_event(
    call: WatchCall,
) -> task_pb2.TaskEvent | grpc.StatusCode:
    """Return the stream's first event, or the status it ended with instead."""
    try:
        event = await each_event(call).read()
    except grpc.aio.AioRpcError as error:
        return error.code()
    assert event is not None
    return event


async def test_a_non_loopback_address_without_keys_is_refused(
    start_executor_on: StartExecutor,
) -> None:
    with pytest.raises(KeysFileError, match=r"refusing to serve 0\.0\.0\.0:0 without API keys"):
        await start_executor_on("--listen=0.0.0.0:0")
    executor = await start_executor_on("--listen=0.0.0.0:0", "--allow-no-keys")
    assert executor.port > 0


async def test_an_approved_plan_of_another_key_is_not_found(
    stub: task_service_pb2_grpc.TaskServiceStub,
) -> None:
    request = task_service_pb2.CreateTaskRequest(text="Plan a garden.", require_approval=True)
    task = await stub.CreateTask(request, metadata=ALICE)
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await stub.ApprovePlan(
            task_service_pb2.ApprovePlanRequest(task_id=task.task_id, plan=plan_pb2.Plan()),
            metadata=BOB,
        )
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
