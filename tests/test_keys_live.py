"""API keys managed while serving: the keys file is read again when it changes (or on
SIGHUP), a bad new file is refused and the old keys stay, a revoked key's open streams end
UNAUTHENTICATED, and mitosis-keygen lists and revokes keys."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import grpc
import pytest

from mitosis.executor.server import Executor
from mitosis.rpc.auth import LiveKeys, default_keys_file, hash_key, key_line, keygen_main
from mitosis.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc
from tests.support.executors import StartExecutor
from tests.support.processes import Service, start_executor
from tests.support.waiting import eventually
from tests.support.watch import EventReader

ALICE_KEY = "mk_alice-test-key-0000000000000000000000000000"
BOB_KEY = "mk_bob-test-key-11111111111111111111111111111111"
CAROL_KEY = "mk_carol-test-key-2222222222222222222222222222222"


def who(key: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key}"),)


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.txt"
    path.write_text(f"{key_line('alice', ALICE_KEY)}\n{key_line('bob', BOB_KEY)}\n")
    return path


@pytest.fixture
async def keyed(start_executor_on: StartExecutor, keys_file: Path) -> Executor:
    return await start_executor_on(f"--api-keys={keys_file}")


def live_keys(executor: Executor) -> LiveKeys:
    keys = executor.serving.keys
    assert isinstance(keys, LiveKeys)
    return keys


def write(path: Path, text: str) -> None:
    path.write_text(text)


async def read_to_end(reader: EventReader) -> None:
    async for _ in reader:
        pass


async def lists(stub: task_service_pb2_grpc.TaskServiceStub, key: str) -> grpc.StatusCode:
    """The status ListTasks answers this key with."""
    try:
        await stub.ListTasks(task_service_pb2.ListTasksRequest(), metadata=who(key))
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_a_key_added_to_the_file_is_let_in_without_a_restart(
    keyed: Executor, keys_file: Path
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{keyed.port}") as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        assert await lists(stub, CAROL_KEY) == grpc.StatusCode.UNAUTHENTICATED
        with keys_file.open("a") as appended:
            appended.write(key_line("carol", CAROL_KEY) + "\n")
        # Nobody tells the executor: it notices the changed file by itself.

        async def carol_let_in() -> bool:
            return await lists(stub, CAROL_KEY) == grpc.StatusCode.OK

        await eventually(carol_let_in, what="carol's key is let in", timeout=15)
        assert await lists(stub, ALICE_KEY) == grpc.StatusCode.OK


async def test_a_malformed_new_file_is_refused_and_the_old_keys_stay(
    keyed: Executor, keys_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(keys_file, "alice not-a-hash\n")
    with caplog.at_level(logging.INFO, logger="mitosis.rpc.auth"):
        assert live_keys(keyed).reload() is False
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "the keys read before stay in use" in errors[0].getMessage()
    assert f"{keys_file}:1" in errors[0].getMessage()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{keyed.port}") as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        assert await lists(stub, ALICE_KEY) == grpc.StatusCode.OK
        assert await lists(stub, BOB_KEY) == grpc.StatusCode.OK


async def test_a_revoked_keys_open_watch_ends_unauthenticated(
    keyed: Executor, keys_file: Path
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{keyed.port}") as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        # Tasks that wait for approval: their streams stay open until something ends them.
        tasks = {
            key: await stub.CreateTask(
                task_service_pb2.CreateTaskRequest(text="Explain tides", require_approval=True),
                metadata=who(key),
            )
            for key in (ALICE_KEY, BOB_KEY)
        }
        watches = {
            key: EventReader(
                stub.WatchTask(
                    task_service_pb2.WatchTaskRequest(task_id=task.task_id), metadata=who(key)
                )
            )
            for key, task in tasks.items()
        }
        for watch in watches.values():
            assert await watch.read() is not None  # the streams are open

        keygen_main(["--revoke", "alice", "--keys-file", str(keys_file)])
        assert live_keys(keyed).reload() is True

        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await read_to_end(watches[ALICE_KEY])
        assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert ended.value.details() == "the API key was revoked"
        # Bob's stream goes on: the next message comes (a heartbeat at least).
        assert await watches[BOB_KEY].read() is not None
        watches[BOB_KEY].call.cancel()
        assert await lists(stub, ALICE_KEY) == grpc.StatusCode.UNAUTHENTICATED
        assert await lists(stub, BOB_KEY) == grpc.StatusCode.OK


def test_keygen_lists_names_only_and_revokes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys_file = tmp_path / "keys.txt"
    keygen_main(["alice", "--keys-file", str(keys_file)])
    keygen_main(["bob", "--keys-file", str(keys_file)])
    capsys.readouterr()
    keygen_main(["--list", "--keys-file", str(keys_file)])
    listed = capsys.readouterr().out
    assert listed.split() == ["alice", "bob"]
    assert "sha256" not in listed
    keygen_main(["--revoke", "alice", "--keys-file", str(keys_file)])
    assert "revoked 'alice'" in capsys.readouterr().err
    keygen_main(["--list", "--keys-file", str(keys_file)])
    assert capsys.readouterr().out.split() == ["bob"]
    assert (keys_file.stat().st_mode & 0o777) == 0o600
    with pytest.raises(SystemExit):
        keygen_main(["--revoke", "alice", "--keys-file", str(keys_file)])
    assert "has no key named 'alice'" in capsys.readouterr().err


def test_keygen_keeps_keys_outside_any_checkout(tmp_path: Path) -> None:
    config = tmp_path / "config"
    assert default_keys_file({"XDG_CONFIG_HOME": str(config)}) == config / "mitosis/keys.txt"
    assert default_keys_file({}).is_relative_to(Path.home())


def test_the_readme_example_keys_file_is_ignored_by_git() -> None:
    root = Path(__file__).resolve().parent.parent
    ignored = (root / ".gitignore").read_text().splitlines()
    assert "/keys.txt" in ignored or "keys.txt" in ignored


def test_a_key_rotated_under_the_same_name_is_a_new_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text(key_line("alice", ALICE_KEY) + "\n")
    keys = LiveKeys(path)
    path.write_text(key_line("alice", CAROL_KEY) + "\n")
    os.utime(path)
    assert keys.reload() is True
    assert not keys.ring.holds(hash_key(ALICE_KEY))
    assert keys.ring.name_for(CAROL_KEY) == "alice"


@pytest.mark.e2e
async def test_sighup_reads_the_keys_file_at_once(
    tmp_path: Path, keys_file: Path, planner_process: Service
) -> None:
    # Polling all but off: only the signal can make the executor read the file again.
    executor = start_executor(
        tmp_path, planner_process, f"--api-keys={keys_file}", "--keys-poll-interval=3600"
    )
    try:
        async with grpc.aio.insecure_channel(executor.target) as channel:
            stub = task_service_pb2_grpc.TaskServiceStub(channel)
            assert await lists(stub, CAROL_KEY) == grpc.StatusCode.UNAUTHENTICATED
            write(keys_file, key_line("carol", CAROL_KEY) + "\n")
            executor.process.send_signal(signal.SIGHUP)

            async def carol_let_in() -> bool:
                return await lists(stub, CAROL_KEY) == grpc.StatusCode.OK

            await eventually(carol_let_in, what="carol's key is let in after SIGHUP")
            assert await lists(stub, ALICE_KEY) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        assert executor.stop() == 0


async def test_tasks_made_without_keys_are_seen_by_admin_keys_only(
    start_executor_on: StartExecutor, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keyless = await start_executor_on()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{keyless.port}") as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        request = task_service_pb2.CreateTaskRequest(text="Explain tides", require_approval=True)
        orphan = await stub.CreateTask(request)
    await keyless.stop(None)

    keys_file = tmp_path / "keys.txt"
    write(keys_file, f"{key_line('alice', ALICE_KEY)}\n{key_line('root', CAROL_KEY, admin=True)}\n")
    with caplog.at_level(logging.WARNING, logger="mitosis.executor"):
        keyed = await start_executor_on(f"--api-keys={keys_file}")
    warnings = [r.getMessage() for r in caplog.records if "without API keys:" in r.getMessage()]
    assert len(warnings) == 1
    assert orphan.task_id in warnings[0]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{keyed.port}") as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        get = task_service_pb2.GetTaskRequest(task_id=orphan.task_id)
        with pytest.raises(grpc.aio.AioRpcError) as hidden:
            await stub.GetTask(get, metadata=who(ALICE_KEY))
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
        seen = await stub.GetTask(get, metadata=who(CAROL_KEY))
        assert (seen.task_id, seen.owner) == (orphan.task_id, "")
        cancel = task_service_pb2.CancelTaskRequest(task_id=orphan.task_id)
        cancelled = await stub.CancelTask(cancel, metadata=who(CAROL_KEY))
        assert cancelled.state == task_pb2.Task.STATE_CANCELLED


def test_keygen_makes_and_lists_admin_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys_file = tmp_path / "keys.txt"
    keygen_main(["root", "--admin", "--keys-file", str(keys_file)])
    keygen_main(["alice", "--keys-file", str(keys_file)])
    key = capsys.readouterr().out.split()[0]
    keygen_main(["--list", "--keys-file", str(keys_file)])
    assert capsys.readouterr().out.splitlines() == ["root (admin)", "alice"]
    ring = LiveKeys(keys_file).ring
    assert ring.admins == frozenset({"root"})
    assert ring.name_for(key) == "root"
