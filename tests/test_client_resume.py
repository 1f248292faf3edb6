"""mitosis.client: exactly-once resume, errors, artifacts; against a real grpc.aio server."""

from __future__ import annotations

import hashlib
import random
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from mitosis.client import (
    BOUNDED_STATE,
    RESUMABLE_CODES,
    Admission,
    AsyncClient,
    Backoff,
    Client,
    FailedPreconditionError,
    IntegrityError,
    InvalidArgumentError,
    MitosisError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    SeqCursor,
    SequenceGapError,
    UnavailableError,
    UnsafePathError,
    artifact_destination,
    error_from_rpc,
)
from mitosis.v1 import task_pb2
from tests.fake_task_service import (
    AbortAfter,
    Behaviour,
    EndAfter,
    FakeTaskService,
    HoldLive,
    Replay,
    SkipAfter,
    StallAfter,
    document_story,
    log_story,
    running,
)

N = 60
FAST: dict[str, Any] = {"max_reconnect_wait": 0.02, "stall_timeout": 5.0}


@pytest.fixture
def fake() -> FakeTaskService:
    service = FakeTaskService()
    service.add(log_story("t", N))
    return service


@pytest.fixture
def target(fake: FakeTaskService) -> Iterator[str]:
    with running(fake) as address:
        yield address


def event(seq: int, kind: str = "log_line") -> task_pb2.TaskEvent:
    message = task_pb2.TaskEvent(task_id="t", seq=seq)
    getattr(message, kind).SetInParent()
    return message


def partial_files(folder: Path) -> list[Path]:
    """Temporary files a download left behind."""
    return list(folder.rglob("*.part"))


async def watch_seqs(client: AsyncClient, task_id: str = "t", after_seq: int = 0) -> list[int]:
    return [e.seq async for e in client.watch(task_id, after_seq)]


# --- pure logic -------------------------------------------------------------------------


def test_cursor_admits_only_the_next_seq_and_drops_duplicates() -> None:
    cursor = SeqCursor()
    assert [cursor.admit(event(s)) for s in (1, 2, 3)] == [Admission.NEW] * 3
    assert cursor.admit(event(2)) is Admission.DUPLICATE
    assert cursor.admit(event(3)) is Admission.DUPLICATE
    assert cursor.last == 3


def test_cursor_passes_heartbeats_without_moving() -> None:
    cursor = SeqCursor(5)
    assert cursor.admit(event(9, "heartbeat")) is Admission.HEARTBEAT
    assert cursor.admit(event(5, "heartbeat")) is Admission.HEARTBEAT
    assert cursor.last == 5


def test_cursor_refuses_a_gap_and_stays_put() -> None:
    cursor = SeqCursor(3)
    with pytest.raises(SequenceGapError) as raised:
        cursor.admit(event(5))
    assert (raised.value.last, raised.value.got) == (3, 5)
    assert cursor.last == 3
    assert cursor.admit(event(4)) is Admission.NEW


def test_backoff_doubles_from_initial_to_the_cap_and_resets() -> None:
    backoff = Backoff(0.2, 5.0, rand=lambda: 1.0)
    delays = [backoff.next_delay() for _ in range(7)]
    assert delays == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])
    backoff.reset()
    assert backoff.next_delay() == pytest.approx(0.2)


def test_backoff_jitter_is_full_and_never_overflows() -> None:
    backoff = Backoff(0.2, 5.0, rand=lambda: 0.5)
    assert backoff.next_delay() == pytest.approx(0.1)
    delays = [backoff.next_delay() for _ in range(5000)]
    assert max(delays) == pytest.approx(2.5)
    seeded = Backoff(rand=random.Random(7).random)
    assert all(0 <= seeded.next_delay() <= 5.0 for _ in range(100))


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError),
        (grpc.StatusCode.OUT_OF_RANGE, OutOfRangeError),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPreconditionError),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDeniedError),
        (grpc.StatusCode.UNAVAILABLE, UnavailableError),
        (grpc.StatusCode.DATA_LOSS, MitosisError),
    ],
)
def test_rpc_errors_map_to_one_hierarchy_with_code_and_message(
    code: grpc.StatusCode, cls: type[MitosisError]
) -> None:
    rpc_error = grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(), "the server says no", None
    )
    error = error_from_rpc(rpc_error)
    assert type(error) is cls
    assert error.code == code
    assert error.message == "the server says no"


@pytest.mark.parametrize(
    "path",
    [
        "../evil.txt",
        "docs/../../evil.txt",
        "/etc/passwd",
        "C:/x",
        "a\\..\\b",
        "",
        "a\x00b",
        "\x1b[2Jreport.md",  # a terminal escape in a file name
        "report\u202etxt.exe",  # a bidi override that disguises the extension
    ],
)
def test_artifact_paths_that_leave_the_folder_are_refused(tmp_path: Path, path: str) -> None:
    with pytest.raises(UnsafePathError):
        artifact_destination(tmp_path, path)


def test_artifact_paths_through_a_symlink_out_of_the_folder_are_refused(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path)
    assert artifact_destination(tmp_path / "out", "docs/a.md") == tmp_path / "out" / "docs/a.md"
    with pytest.raises(UnsafePathError):
        artifact_destination(tmp_path / "out", "link/a.md")


# --- the watch against a real server -----------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
async def test_streams_cut_at_random_points_still_deliver_each_seq_once_in_order(
    fake: FakeTaskService, target: str, seed: int
) -> None:
    rng = random.Random(seed)
    breaks: list[Behaviour] = []
    for _ in range(25):
        count = rng.randint(0, 6)
        choices: list[Behaviour] = [
            AbortAfter(count, rng.choice(sorted(RESUMABLE_CODES, key=str))),
            EndAfter(count),
            Replay(rng.randint(1, 5), count),
            SkipAfter(count),
        ]
        breaks.append(rng.choice(choices))
    fake.script = breaks
    async with AsyncClient(target, **FAST) as client:
        seqs = await watch_seqs(client)
    assert seqs == list(range(1, N + 1))
    assert len(fake.watch_calls) > 1
    # Every resume asked for exactly what had not been delivered yet.
    assert fake.watch_calls == sorted(fake.watch_calls)
    assert set(fake.watch_calls) <= set(range(N))


async def test_duplicates_sent_by_the_server_are_dropped(
    fake: FakeTaskService, target: str
) -> None:
    fake.script = [AbortAfter(10), Replay(back=10, count=15), Replay(back=3, count=40)]
    async with AsyncClient(target, **FAST) as client:
        events = [e async for e in client.watch("t")]
    assert [e.seq for e in events] == list(range(1, N + 1))
    assert [e.log_line.text for e in events[:3]] == ["line 1", "line 2", "line 3"]
    assert fake.watch_calls == [0, 10, 15, 52]


async def test_watch_resumes_from_after_seq_given_by_the_caller(
    fake: FakeTaskService, target: str
) -> None:
    fake.script = [EndAfter(5)]
    async with AsyncClient(target, **FAST) as client:
        assert await watch_seqs(client, after_seq=40) == list(range(41, N + 1))
    assert fake.watch_calls == [40, 45]


async def test_watch_of_an_ended_task_from_its_last_seq_ends_without_reconnecting(
    fake: FakeTaskService, target: str
) -> None:
    async with AsyncClient(target, **FAST) as client:
        assert await watch_seqs(client, after_seq=N) == []
    assert fake.watch_calls == [N]


@pytest.mark.parametrize(
    ("task_id", "after_seq", "cls"),
    [("nope", 0, NotFoundError), ("t", -1, InvalidArgumentError), ("t", N + 1, OutOfRangeError)],
)
async def test_errors_a_retry_cannot_fix_are_raised_at_once(
    fake: FakeTaskService, target: str, task_id: str, after_seq: int, cls: type[MitosisError]
) -> None:
    async with AsyncClient(target, **FAST) as client:
        with pytest.raises(cls) as raised:
            await watch_seqs(client, task_id, after_seq)
    assert fake.watch_calls == [after_seq]  # no retry
    assert raised.value.message


async def test_not_found_carries_the_code_and_the_servers_message(target: str) -> None:
    async with AsyncClient(target, **FAST) as client:
        with pytest.raises(NotFoundError) as raised:
            await watch_seqs(client, "nope")
    assert raised.value.code == grpc.StatusCode.NOT_FOUND
    assert raised.value.message == "no task 'nope'"


async def test_a_permanent_error_mid_stream_is_raised_after_the_events_before_it(
    fake: FakeTaskService, target: str
) -> None:
    fake.script = [AbortAfter(3, grpc.StatusCode.PERMISSION_DENIED)]
    seen: list[int] = []

    async def collect(client: AsyncClient) -> None:
        async for e in client.watch("t"):
            seen.append(e.seq)

    async with AsyncClient(target, **FAST) as client:
        with pytest.raises(PermissionDeniedError):
            await collect(client)
    assert seen == [1, 2, 3]
    assert fake.watch_calls == [0]


async def test_a_stalled_stream_is_resumed_by_the_watchdog(
    fake: FakeTaskService, target: str
) -> None:
    fake.script = [StallAfter(7, heartbeats=3)]
    states: list[str] = []
    async with AsyncClient(target, max_reconnect_wait=0.02, stall_timeout=0.3) as client:
        seqs = [e.seq async for e in client.watch("t", on_state=states.append)]
    assert seqs == list(range(1, N + 1))
    assert fake.watch_calls == [0, 7]
    assert any("nothing received for 0.3 s" in s for s in states)


async def test_heartbeats_are_passed_through_on_request_without_moving_the_cursor(
    fake: FakeTaskService, target: str
) -> None:
    fake.script = [StallAfter(4, heartbeats=3)]
    async with AsyncClient(target, max_reconnect_wait=0.02, stall_timeout=0.3) as client:
        events = [e async for e in client.watch("t", include_heartbeats=True)]
    kinds = [e.WhichOneof("kind") for e in events]
    assert kinds.count("heartbeat") == 3
    assert [e.seq for e in events if e.WhichOneof("kind") != "heartbeat"] == list(range(1, N + 1))
    assert fake.watch_calls == [0, 4]


async def test_connection_states_are_reported_in_order(fake: FakeTaskService, target: str) -> None:
    fake.script = [AbortAfter(2)]
    states: list[str] = []
    async with AsyncClient(target, **FAST) as client:
        async for _ in client.watch("t", on_state=states.append):
            pass
    assert states[:2] == ["connecting", "live"]
    assert states[2].startswith("reconnecting (attempt 1, waiting ")
    assert states[2].endswith("s: UNAVAILABLE: the stream was cut)")
    assert states[3:] == ["connecting", "live"]


async def test_watch_gives_up_after_the_reconnect_deadline(
    fake: FakeTaskService, target: str
) -> None:
    fake.script = [AbortAfter(0)] * 10_000
    async with AsyncClient(target, max_reconnect_wait=0.05, reconnect_deadline=0.3) as client:
        with pytest.raises(UnavailableError) as raised:
            await watch_seqs(client)
    assert "UNAVAILABLE: the stream was cut" in raised.value.message
    assert len(fake.watch_calls) > 2


async def test_unary_calls_retry_unavailable_within_the_deadline(
    fake: FakeTaskService, target: str
) -> None:
    fake.unary_failures = [grpc.StatusCode.UNAVAILABLE] * 2
    async with AsyncClient(target, **FAST) as client:
        task = await client.get_task("t")
    assert task.task_id == "t"
    assert fake.unary_calls == 3


async def test_create_task_is_retried_with_one_request_id_so_it_cannot_run_twice(
    fake: FakeTaskService, target: str
) -> None:
    fake.unary_failures = [grpc.StatusCode.UNAVAILABLE]
    async with AsyncClient(target, **FAST) as client:
        task = await client.create_task("write a report")
        again = await client.create_task("write a report", request_id="")
    request_ids = [request.request_id for request in fake.create_requests]
    assert len(request_ids) == 3
    assert request_ids[0] == request_ids[1]  # the retry: the server returns the same task
    assert str(uuid.UUID(request_ids[0])) == request_ids[0]
    assert request_ids[2] not in ("", request_ids[0])  # a new call, a new task
    assert task.task_id != again.task_id


async def test_an_unreachable_server_is_unavailable_after_the_deadline(
    closed_port: int,
) -> None:
    async with AsyncClient(f"127.0.0.1:{closed_port}", reconnect_deadline=0.3) as client:
        with pytest.raises(UnavailableError):
            await client.get_task("t")


async def test_list_get_and_cancel(fake: FakeTaskService, target: str) -> None:
    fake.add(document_story("d", "write", task_pb2.Task.STATE_SUCCEEDED))
    async with AsyncClient(target, **FAST) as client:
        page = await client.list_tasks(page_size=1)
        assert [t.task_id for t in page.tasks] == ["d"]
        rest = await client.list_tasks(page_size=1, page_token=page.next_page_token)
        assert [t.task_id for t in rest.tasks] == ["t"]
        assert not rest.next_page_token
        with pytest.raises(FailedPreconditionError):
            await client.cancel_task("d")


# --- artifacts ---------------------------------------------------------------------------


async def test_download_artifacts_writes_verified_files_in_subfolders(
    fake: FakeTaskService, target: str, tmp_path: Path
) -> None:
    story = fake.add(document_story("d", "write", task_pb2.Task.STATE_SUCCEEDED))
    async with AsyncClient(target, **FAST) as client:
        paths = await client.download_artifacts("d", tmp_path / "out")
    assert paths == [
        tmp_path / "out" / "docs" / "outline.md",
        tmp_path / "out" / "docs" / "report.md",
    ]
    for path, artifact in zip(paths, story.task.artifacts, strict=True):
        assert path.read_bytes() == story.files[artifact.path]
    assert not partial_files(tmp_path / "out")


async def test_download_refuses_a_file_whose_sha256_does_not_match(
    fake: FakeTaskService, target: str, tmp_path: Path
) -> None:
    story = fake.add(document_story("d", "write", task_pb2.Task.STATE_SUCCEEDED))
    story.files["docs/report.md"] = story.files["docs/report.md"].replace(b"Line", b"Lime")
    async with AsyncClient(target, **FAST) as client:
        with pytest.raises(IntegrityError, match=r"docs/report\.md"):
            await client.download_artifacts("d", tmp_path)
    assert (tmp_path / "docs" / "outline.md").exists()
    assert not (tmp_path / "docs" / "report.md").exists()
    assert not partial_files(tmp_path)


async def test_download_refuses_a_path_that_escapes_before_writing_anything(
    fake: FakeTaskService, target: str, tmp_path: Path
) -> None:
    story = fake.add(document_story("d", "write", task_pb2.Task.STATE_SUCCEEDED))
    data = b"gotcha"
    story.task.artifacts.add(
        path="../evil.txt", size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
    )
    story.files["../evil.txt"] = data
    out = tmp_path / "out"
    async with AsyncClient(target, **FAST) as client:
        with pytest.raises(UnsafePathError):
            await client.download_artifacts("d", out)
    assert not (tmp_path / "evil.txt").exists()
    assert not out.exists()


async def test_a_broken_download_resumes_from_the_bytes_it_has(
    fake: FakeTaskService, target: str, tmp_path: Path
) -> None:
    story = fake.add(document_story("d", "write", task_pb2.Task.STATE_SUCCEEDED))
    fake.read_cuts = [0, None, 3, 2]  # outline.md breaks at once, report.md twice midway
    async with AsyncClient(target, **FAST) as client:
        paths = await client.download_artifacts("d", tmp_path)
    for path, artifact in zip(paths, story.task.artifacts, strict=True):
        assert path.read_bytes() == story.files[artifact.path]  # and its sha256 was checked
    step = fake.chunk_size
    assert fake.read_offsets == [0, 0, 0, 3 * step, 5 * step]
    assert not partial_files(tmp_path)


async def test_a_resumed_download_still_refuses_a_wrong_sha256(
    fake: FakeTaskService, target: str, tmp_path: Path
) -> None:
    story = fake.add(document_story("d", "write", task_pb2.Task.STATE_SUCCEEDED))
    story.files["docs/report.md"] = story.files["docs/report.md"].replace(b"Line", b"Lime")
    fake.read_cuts = [None, 2]
    async with AsyncClient(target, **FAST) as client:
        with pytest.raises(IntegrityError, match=r"docs/report\.md"):
            await client.download_artifacts("d", tmp_path)
    assert fake.read_offsets[-1] == 2 * fake.chunk_size
    assert not partial_files(tmp_path)


async def test_read_artifact_streams_the_bytes_in_order(fake: FakeTaskService, target: str) -> None:
    story = fake.add(document_story("d", "write", task_pb2.Task.STATE_SUCCEEDED))
    async with AsyncClient(target, **FAST) as client:
        chunks = [c async for c in client.read_artifact("d", "docs/outline.md")]
        with pytest.raises(NotFoundError):
            [c async for c in client.read_artifact("d", "missing.md")]
    assert len(chunks) > 1
    assert b"".join(chunks) == story.files["docs/outline.md"]


# --- the synchronous client ----------------------------------------------------------------


def test_sync_client_resumes_like_the_async_one(fake: FakeTaskService, target: str) -> None:
    fake.script = [AbortAfter(4), EndAfter(2), Replay(back=2, count=5)]
    threads: set[int] = set()
    states: list[str] = []

    def on_state(state: str) -> None:
        threads.add(threading.get_ident())
        states.append(state)

    with Client(target, **FAST) as client:
        seqs = [e.seq for e in client.watch("t", on_state=on_state)]
        task = client.get_task("t")
        with pytest.raises(NotFoundError):
            client.get_task("nope")
    assert seqs == list(range(1, N + 1))
    assert fake.watch_calls == [0, 4, 6, 9]
    assert task.last_seq == N
    assert threads == {threading.get_ident()}  # callbacks run in the caller's thread
    assert states.count("live") == 4


def test_sync_watch_can_be_abandoned_midway(fake: FakeTaskService, target: str) -> None:
    fake.script = [StallAfter(3)]
    with Client(target, **FAST) as client:
        events = client.watch("t")
        assert [next(events).seq for _ in range(3)] == [1, 2, 3]
        events.close()  # stops the stream on the background loop
        assert client.get_task("t").task_id == "t"


def test_sync_client_downloads_and_raises_mitosis_errors(
    fake: FakeTaskService, target: str, tmp_path: Path
) -> None:
    fake.add(document_story("d", "write", task_pb2.Task.STATE_SUCCEEDED))
    with Client(target, **FAST) as client:
        paths = client.download_artifacts("d", tmp_path)
        data = b"".join(client.read_artifact("d", "docs/outline.md"))
        with pytest.raises(OutOfRangeError):
            list(client.watch("t", after_seq=N + 5))
    assert [p.name for p in paths] == ["outline.md", "report.md"]
    assert data == paths[0].read_bytes()


# --- batches and bounded calls -------------------------------------------------------------


async def test_a_stream_cut_after_a_batch_resumes_after_its_last_event(
    fake: FakeTaskService, target: str
) -> None:
    fake.batch_size = 10
    fake.script = [AbortAfter(15), EndAfter(3)]
    async with AsyncClient(target, **FAST) as client:
        assert await watch_seqs(client) == list(range(1, N + 1))
    # Messages of 10 and 5 events arrived whole, then the cut: the resume asks from seq 15.
    assert fake.watch_calls == [0, 15, 18]


async def test_a_caller_that_stops_inside_a_batch_resumes_from_the_last_event_it_took(
    fake: FakeTaskService, target: str
) -> None:
    fake.batch_size = 10
    async with AsyncClient(target, **FAST) as client:
        taken = []
        async for event in client.watch("t"):
            taken.append(event.seq)
            if event.seq == 4:
                break  # six more events of that message were received, never taken
        rest = await watch_seqs(client, after_seq=taken[-1])
    assert taken + rest == list(range(1, N + 1))
    assert fake.watch_calls == [0, 4]


async def test_a_path_that_holds_back_streams_is_watched_with_bounded_calls(
    fake: FakeTaskService, target: str
) -> None:
    fake.script = [HoldLive(per_response=4)]
    states: list[str] = []
    async with AsyncClient(target, probe_timeout=0.2, bounded_wait=0.25, **FAST) as client:
        seqs = [e.seq async for e in client.watch("t", on_state=states.append)]
        assert client.path_buffers
        again = len(fake.watch_requests)
        assert await watch_seqs(client, after_seq=N - 2) == [N - 1, N]
        assert fake.watch_requests[again].HasField("max_wait")  # no second probe

    assert seqs == list(range(1, N + 1))
    live, *bounded = fake.watch_requests[:again]
    assert not live.HasField("max_wait")
    assert {r.max_wait.ToTimedelta().total_seconds() for r in bounded} == {0.25}
    assert [r.after_seq for r in bounded] == list(range(0, N, 4))
    assert BOUNDED_STATE in states
    assert not any(state.startswith("reconnecting") for state in states)


async def test_bounded_calls_can_be_asked_for_from_the_start(
    fake: FakeTaskService, target: str
) -> None:
    fake.script = [HoldLive(per_response=20)]
    async with AsyncClient(target, **FAST) as client:
        assert [e.seq async for e in client.watch("t", bounded=True)] == list(range(1, N + 1))
    assert all(r.HasField("max_wait") for r in fake.watch_requests)
