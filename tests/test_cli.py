"""The `mitosis` command, called in-process with main(args, env) against a fake TaskService."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from mitosis.cli.main import main
from mitosis.cli.plain import PlainView
from mitosis.cli.progress import TaskProgress
from mitosis.cli.render import LiveView
from mitosis.cli.status import ExitStatus
from mitosis.cli.untrusted import clean, clean_line
from mitosis.executor.server import Executor
from mitosis.v1 import task_pb2
from tests.fake_task_service import (
    AbortAfter,
    EndAfter,
    FakeTaskService,
    StallAfter,
    document_story,
    running,
)

Task = task_pb2.Task
HOSTILE = "[bold red]x[/] \x1b]0;pwned\x07\x1b[2J\x1b[31mred\x1b[0m \u202eevil"


@pytest.fixture
def fake() -> FakeTaskService:
    return FakeTaskService()


@pytest.fixture
def env(fake: FakeTaskService) -> Iterator[dict[str, str]]:
    with running(fake) as target:
        yield {"MITOSIS_TARGET": target}


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def story_length(fake: FakeTaskService, task_id: str = "task-1") -> int:
    return len(fake.tasks[task_id].events)


# --- run and watch ---------------------------------------------------------------------------


def test_run_json_prints_every_event_once_in_seq_order(
    fake: FakeTaskService, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--json", "run", "write", "a", "report"], env=env) == ExitStatus.SUCCESS
    out, err = capsys.readouterr()
    *events, result = json_lines(out)
    assert [int(str(e["seq"])) for e in events] == list(range(1, story_length(fake) + 1))
    assert {e["taskId"] for e in events} == {"task-1"}
    assert events[-1]["taskStateChanged"] == {"state": "STATE_SUCCEEDED"}
    assert fake.tasks["task-1"].task.text == "write a report"
    assert "created task task-1" in err
    assert "task task-1 succeeded" in err
    # The last line is the one result object: state, files, usage.
    assert result["result"]["taskId"] == "task-1"  # type: ignore[index]
    assert result["result"]["state"] == "STATE_SUCCEEDED"  # type: ignore[index]
    files = result["result"]["files"]  # type: ignore[index]
    assert [f["path"] for f in files] == ["docs/outline.md", "docs/report.md"]
    assert set(result["result"]["usage"]) >= {"modelCalls", "inputTokens"}  # type: ignore[index]


def test_run_approve_exits_9_while_the_plan_waits(
    fake: FakeTaskService, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Not on a terminal: nobody can approve, so the plan waits and run says so.
    assert main(["--json", "run", "--approve", "write a report"], env=env) == 9
    assert ExitStatus.AWAITING_APPROVAL == 9
    out, err = capsys.readouterr()
    *_, result = json_lines(out)
    assert result["result"]["state"] == "STATE_AWAITING_APPROVAL"  # type: ignore[index]
    assert "the plan waits; run it with: mitosis approve task-1" in err


def test_ls_says_when_there_are_no_tasks(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ls"], env=env) == 0
    out, err = capsys.readouterr()
    assert (out, err) == ("", "no tasks yet\n")


def test_delete_removes_the_task(
    fake: FakeTaskService, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake.add(document_story("t", "write", Task.STATE_SUCCEEDED))
    assert main(["delete", "t"], env=env) == 0
    assert capsys.readouterr().out == "deleted task t\n"
    assert "t" not in fake.tasks
    assert main(["delete", "t"], env=env) == ExitStatus.NOT_FOUND


def test_artifacts_refuse_to_overwrite_without_force(
    fake: FakeTaskService, env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    story = fake.add(document_story("t", "write", Task.STATE_SUCCEEDED))
    (tmp_path / "docs").mkdir()
    mine = tmp_path / "docs" / "report.md"
    mine.write_text("my own notes")

    assert main(["artifacts", "t", "--out", str(tmp_path)], env=env) == ExitStatus.ERROR
    err = capsys.readouterr().err
    assert err == f"error: {mine} exists already; give --force to overwrite it\n"
    assert mine.read_text() == "my own notes"
    assert not (tmp_path / "docs" / "outline.md").exists()  # nothing written

    assert main(["artifacts", "t", "--out", str(tmp_path), "--force"], env=env) == 0
    assert mine.read_bytes() == story.files["docs/report.md"]


def test_run_json_stays_exactly_once_across_broken_streams(
    fake: FakeTaskService, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake.script = [AbortAfter(5), EndAfter(3)]
    assert main(["run", "write a report", "--json"], env=env) == ExitStatus.SUCCESS
    out, err = capsys.readouterr()
    events = json_lines(out)[:-1]  # the last line is the result
    assert [int(str(e["seq"])) for e in events] == list(range(1, story_length(fake) + 1))
    assert fake.watch_calls == [0, 5, 8]
    assert "connection: reconnecting (attempt 1" in err


def test_plain_output_reads_as_a_transcript_with_each_page(
    fake: FakeTaskService, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "write a report"], env=env) == ExitStatus.SUCCESS
    out, err = capsys.readouterr()
    assert "[seq 2] plan ready: 3 steps, model offline (deterministic, no network)" in out
    assert "[seq 4] step 1 running (attempt 1)" in out
    assert (
        "[seq 5] page 1 started: Outline (docs/outline.md)\n# Outline\n\nTask: write a report\n"
        in out
    )
    assert "This is the outline, line one.\nLine two.\n[seq 8] page 1 finished: " in out
    assert "[seq 12] page 2 started: Report (docs/report.md)\n# Report\n" in out
    assert "[seq 19] stdout | hello from python" in out
    assert "[seq 20] stderr | a warning" in out
    assert "\x1b" not in out + err
    size = len(fake.tasks["task-1"].files["docs/outline.md"])
    assert f"docs/outline.md  ({size} bytes)" in err  # the summary lists the delivered files


def test_run_out_downloads_the_files_after_the_end(
    fake: FakeTaskService, env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "write a report", "--out", str(tmp_path)], env=env) == 0
    out, _ = capsys.readouterr()
    files = fake.tasks["task-1"].files
    assert (tmp_path / "docs" / "report.md").read_bytes() == files["docs/report.md"]
    assert (
        f"saved {tmp_path / 'docs' / 'outline.md'} ({len(files['docs/outline.md'])} bytes)" in out
    )


def test_watch_after_seq_shows_only_later_events(
    fake: FakeTaskService, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake.add(document_story("t", "write", Task.STATE_SUCCEEDED))
    assert main(["watch", "t", "--after-seq", "10", "--json"], env=env) == 0
    seqs = [int(str(e["seq"])) for e in json_lines(capsys.readouterr().out)]
    assert seqs == list(range(11, story_length(fake, "t") + 1))


@pytest.mark.parametrize(
    ("state", "status", "words"),
    [
        (Task.STATE_FAILED, ExitStatus.TASK_FAILED, "error: step 3 failed: boom"),
        (Task.STATE_CANCELLED, ExitStatus.TASK_CANCELLED, "error: cancelled by CancelTask"),
    ],
)
def test_watch_exits_with_how_the_task_ended(
    fake: FakeTaskService,
    env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    state: Task.State.ValueType,
    status: ExitStatus,
    words: str,
) -> None:
    fake.add(document_story("t", "write", state))
    assert main(["watch", "t"], env=env) == status
    assert words in capsys.readouterr().err


def test_run_of_a_failing_task_exits_1(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "please fail"], env=env) == ExitStatus.TASK_FAILED
    assert "task task-1 failed" in capsys.readouterr().err


def test_ctrl_c_leaves_the_task_running_and_prints_how_to_resume(
    fake: FakeTaskService, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake.add(document_story("t", "write", Task.STATE_SUCCEEDED))
    fake.script = [StallAfter(6)]

    def press_ctrl_c() -> None:
        fake.stalled.wait(10)
        time.sleep(0.2)  # let the client show what it received
        os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    try:
        status = main(["watch", "t"], env=env)
    finally:
        presser.join()
    out, err = capsys.readouterr()
    assert status == ExitStatus.INTERRUPTED
    assert "[seq 5] page 1 started" in out
    assert "task t keeps running" in err
    assert "mitosis watch t --after-seq 6" in err


# --- the other commands ----------------------------------------------------------------------


def test_ls_pages_and_all(
    fake: FakeTaskService, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("a", "b", "c"):
        fake.add(document_story(name, f"task {name}", Task.STATE_SUCCEEDED))
    assert main(["ls", "--page-size", "2"], env=env) == 0
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()] == ["c", "b"]
    assert "more tasks: mitosis ls --page-size 2 --page-token 2" in err
    assert main(["ls", "--page-size", "2", "--all", "--json"], env=env) == 0
    assert [t["taskId"] for t in json_lines(capsys.readouterr().out)] == ["c", "b", "a"]


def test_ls_lists_the_basic_view_and_whole_tasks_with_full(
    fake: FakeTaskService, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake.add(document_story("d", "write", Task.STATE_SUCCEEDED))
    assert main(["ls", "--json"], env=env) == 0
    basic = json_lines(capsys.readouterr().out)[0]
    assert (basic["taskId"], "steps" in basic, "artifacts" in basic) == ("d", False, False)
    assert main(["ls", "--json", "--full"], env=env) == 0
    full = json_lines(capsys.readouterr().out)[0]
    assert full["steps"]
    assert full["artifacts"]


def test_get_shows_the_task_and_says_what_the_offline_model_is(
    fake: FakeTaskService, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    story = fake.add(document_story("t", "write", Task.STATE_FAILED))
    assert main(["get", "t"], env=env) == 0
    out = capsys.readouterr().out
    assert "state:    failed" in out
    assert "model:    offline (deterministic, no network)" in out
    assert "✗ step 3  Check the numbers  [python]  attempt 1  step 3 failed: boom" in out
    report = story.task.artifacts[1]
    assert (
        f"docs/report.md  {report.size_bytes} bytes  text/markdown  sha256 {report.sha256}" in out
    )
    assert main(["get", "t", "--json"], env=env) == 0
    assert json_lines(capsys.readouterr().out)[0]["state"] == "STATE_FAILED"


def test_cancel_shows_the_cancelled_task_or_refuses_an_ended_one(
    fake: FakeTaskService, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    running_task = fake.add(document_story("r", "write", Task.STATE_SUCCEEDED))
    running_task.task.state = Task.STATE_RUNNING
    assert main(["cancel", "r"], env=env) == 0
    assert "state:    cancelled" in capsys.readouterr().out
    assert main(["cancel", "r"], env=env) == ExitStatus.INVALID_ARGUMENT
    assert capsys.readouterr().err == "error: task r has already ended\n"


def test_artifacts_lists_or_downloads(
    fake: FakeTaskService, env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    story = fake.add(document_story("t", "write", Task.STATE_SUCCEEDED))
    assert main(["artifacts", "t"], env=env) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == ["docs/outline.md", "docs/report.md"]
    assert main(["artifacts", "t", "--out", str(tmp_path), "--json"], env=env) == 0
    saved = json_lines(capsys.readouterr().out)
    assert [Path(str(s["path"])).name for s in saved] == ["outline.md", "report.md"]
    assert (tmp_path / "docs" / "outline.md").read_bytes() == story.files["docs/outline.md"]


def test_a_download_that_fails_its_check_is_an_error(
    fake: FakeTaskService, env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    story = fake.add(document_story("t", "write", Task.STATE_SUCCEEDED))
    story.files["docs/outline.md"] += b"tampered"
    assert main(["artifacts", "t", "--out", str(tmp_path)], env=env) == ExitStatus.ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: docs/outline.md: got ")
    assert err.count("\n") == 1


# --- errors and exit statuses --------------------------------------------------------------


def test_not_found_is_one_error_line_and_exit_4(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["watch", "nope"], env=env) == ExitStatus.NOT_FOUND
    out, err = capsys.readouterr()
    assert (out, err) == ("", "error: no task 'nope'\n")


def test_a_seq_beyond_the_log_is_an_invalid_argument(
    fake: FakeTaskService, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake.add(document_story("t", "write", Task.STATE_SUCCEEDED))
    assert main(["watch", "t", "--after-seq", "999"], env=env) == ExitStatus.INVALID_ARGUMENT
    assert capsys.readouterr().err == "error: after_seq is beyond the newest event\n"


def test_an_unreachable_server_exits_6(
    closed_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    target = f"127.0.0.1:{closed_port}"
    argv = ["--target", target, "get", "t", "--reconnect-deadline", "0.3"]
    assert main(argv, env={}) == ExitStatus.UNAVAILABLE
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot reach the TaskService at {target}: ")
    assert err.count("\n") == 1


def test_exit_statuses_are_stable() -> None:
    assert {s.name: int(s) for s in ExitStatus} == {
        "SUCCESS": 0,
        "TASK_FAILED": 1,
        "USAGE": 2,
        "TASK_CANCELLED": 3,
        "NOT_FOUND": 4,
        "INVALID_ARGUMENT": 5,
        "UNAVAILABLE": 6,
        "ERROR": 7,
        "UNAUTHENTICATED": 8,
        "AWAITING_APPROVAL": 9,
        "INTERRUPTED": 130,
    }


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["watch"], env={}) == ExitStatus.USAGE
    assert "required: TASK_ID" in capsys.readouterr().err
    assert main(["watch", "t", "--after-seq", "-1"], env={}) == ExitStatus.USAGE


def test_help_lists_commands_and_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"], env={"MITOSIS_TARGET": "example:1"}) == 0
    out = capsys.readouterr().out
    for word in ("run", "watch", "ls", "get", "cancel", "artifacts", "--json", "--plain"):
        assert word in out
    assert "(now: example:1)" in out
    assert "130  interrupted by Ctrl-C; the task keeps running" in out
    assert "  3  run/watch: the task was cancelled" in out
    assert main(["run", "--help"], env={}) == 0
    assert "--out DIR" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"], env={}) == 0
    assert capsys.readouterr().out.startswith("mitosis ")


# --- untrusted text, colour, the live view --------------------------------------------------


def test_untrusted_text_is_printed_literally_without_escape_sequences(
    fake: FakeTaskService, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", HOSTILE], env=env) == 0
    assert main(["get", "task-1"], env=env) == 0
    out, err = capsys.readouterr()
    assert "Task: [bold red]x[/] red evil\n" in out  # the page text, in plain mode
    assert "text:     [bold red]x[/] red evil\n" in out  # get
    for text in (out, err):
        assert "\x1b" not in text
        assert "\x07" not in text
        assert "\u202e" not in text
        assert "pwned" not in text


def test_untrusted_text_in_the_live_view_is_literal(
    fake: FakeTaskService, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    live_env = {**env, "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "100"}
    assert main(["run", HOSTILE], env=live_env) == 0
    err = capsys.readouterr().err
    assert "[bold red]x[/]" in err
    assert "Page 1: Outline" in err
    assert "\x1b]0;" not in err
    assert "\x1b[2J" not in err
    assert "pwned" not in err


def test_no_color_is_respected(closed_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--target", f"127.0.0.1:{closed_port}", "--reconnect-deadline", "0.2", "get", "t"]
    main(argv, env={"TTY_COMPATIBLE": "1"})
    assert "\x1b[1;31merror: " in capsys.readouterr().err  # red on a terminal...
    main(argv, env={"TTY_COMPATIBLE": "1", "NO_COLOR": "1"})
    assert "\x1b[1merror: " in capsys.readouterr().err  # ...only bold with NO_COLOR


def live_events(fake_state: Task.State.ValueType) -> tuple[Task, list[task_pb2.TaskEvent]]:
    story = document_story("t", "write", fake_state)
    return Task(task_id="t", text="write", model="offline"), story.events


def test_live_view_shows_steps_the_current_page_and_tool_output() -> None:
    task, events = live_events(Task.STATE_CANCELLED)
    console = Console(file=io.StringIO(), width=100, force_terminal=True, record=True)
    view = LiveView(console, TaskProgress(task))
    with view:
        for e in events[:13]:  # up to the first text of page 2
            view.on_event(e)
        view.on_state("reconnecting (attempt 2, waiting 0.4 s: UNAVAILABLE: cut)")
        snapshot = Console(width=200, record=True, file=io.StringIO())
        snapshot.print(view.renderable())
        during = snapshot.export_text()
        for e in events[13:]:
            view.on_event(e)
        snapshot.print(view.renderable())
        after = snapshot.export_text()
    assert "model: offline (deterministic, no network)" in during
    assert "connection: reconnecting (attempt 2, waiting 0.4 s: UNAVAILABLE: cut)" in during
    assert "✓ step 1 Write the outline" in during
    assert "Page 2 — Report (docs/report.md)" in during
    assert "# Report" in during
    assert "· step 3 Check the numbers" in during
    assert "⊘ step 3 Check the numbers" in after
    assert "stdout | hello from python" in after
    printed = console.export_text()  # finished pages stay above the live area
    assert "Page 1: Outline" in printed
    assert "Page 2: Report" in printed
    assert "This is the report, line one." in printed


def test_plain_view_starts_a_new_line_when_output_interrupts_a_page() -> None:
    task, events = live_events(Task.STATE_SUCCEEDED)
    out, err = io.StringIO(), io.StringIO()
    log = task_pb2.TaskEvent(seq=6, log_line=task_pb2.LogLine(text="note"))
    with PlainView(out, err, TaskProgress(task)) as view:
        view.on_event(events[4])  # page started
        view.on_event(task_pb2.TaskEvent(seq=5, page_delta=task_pb2.PageDelta(text="half a li")))
        view.on_event(log)
    assert out.getvalue().endswith("half a li\n[seq 6] log | note\n")


@pytest.mark.parametrize(
    ("text", "cleaned"),
    [
        ("plain\ttext\nnext", "plain\ttext\nnext"),
        ("\x1b[31mred\x1b[0m", "red"),
        ("title\x1b]0;pwned\x07!", "title!"),
        ("link \x1b]8;;http://x\x1b\\here\x1b]8;;\x1b\\", "link here"),
        ("bell\x07 nul\x00 del\x7f c1\x9b", "bell nul del c1"),
        ("crlf\r\nline\rover", "crlf\nlineover"),
        ("\u202eevil", "evil"),
    ],
)
def test_clean_strips_terminal_control(text: str, cleaned: str) -> None:
    assert clean(text) == cleaned


def test_clean_line_keeps_one_line() -> None:
    assert clean_line("a\nb\tc") == "a b c"


# --- against the real executor ---------------------------------------------------------------


async def test_run_against_the_real_executor_delivers_verified_files(
    executor: Executor, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"MITOSIS_TARGET": f"127.0.0.1:{executor.port}"}
    argv = ["--json", "run", "write a short note about tests", "--out", str(tmp_path)]
    assert await asyncio.to_thread(main, argv, env) == ExitStatus.SUCCESS
    out, err = capsys.readouterr()
    lines = json_lines(out)
    events = [line for line in lines if "seq" in line]
    assert [int(str(e["seq"])) for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["taskStateChanged"]["state"] == "STATE_SUCCEEDED"  # type: ignore[index]
    saved = [Path(path) for path in lines[-1]["result"]["saved"]]  # type: ignore[index]
    assert saved
    assert all(path.is_relative_to(tmp_path) for path in saved)
    assert "model: offline (deterministic, no network)" in err
    task_id = str(events[0]["taskId"])
    # Watching an ended task from its last seq shows nothing and ends at once.
    last = str(len(events))
    assert await asyncio.to_thread(main, ["watch", task_id, "--after-seq", last], env) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert f"task {task_id} succeeded" in err
