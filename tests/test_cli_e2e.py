"""The `mitosis` CLI as a subprocess against both services as subprocesses."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
from pathlib import Path

import pytest

from .support.ports import free_port
from .support.processes import BIN, Service, start_executor

pytestmark = pytest.mark.e2e
TASK_TEXT = "Write a short market brief on home solar batteries"


def mitosis(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "mitosis"), *args], capture_output=True, text=True, timeout=timeout
    )


def test_run_shows_pages_and_delivers_verified_files(
    tmp_path: Path, planner_process: Service
) -> None:
    executor = start_executor(tmp_path, planner_process, pace="0")
    try:
        out = tmp_path / "out"
        result = mitosis("--target", executor.target, "run", TASK_TEXT, "--out", str(out))
        listing = mitosis("--target", executor.target, "--json", "ls", "--full")
    finally:
        executor.stop()

    assert result.returncode == 0, result.stderr
    assert "page 1 started" in result.stdout
    assert "# Home Solar Batteries: Market Brief" in result.stdout
    assert "model: offline" in result.stderr
    assert "succeeded" in result.stderr
    tasks = [json.loads(line) for line in listing.stdout.splitlines()]
    assert tasks[0]["state"] == "STATE_SUCCEEDED"
    for artifact in tasks[0]["artifacts"]:
        data = (out / artifact["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == artifact["sha256"]


def test_watch_survives_an_executor_killed_and_restarted(
    tmp_path: Path, planner_process: Service
) -> None:
    listen = f"--listen=127.0.0.1:{free_port()}"  # the same port again after the kill
    executor = start_executor(tmp_path, planner_process, listen)
    created = mitosis("--target", executor.target, "--json", "run", TASK_TEXT, "--detach")
    assert created.returncode == 0, created.stderr
    task_id = json.loads(created.stdout)["taskId"]
    with subprocess.Popen(
        [str(BIN / "mitosis"), "--target", executor.target, "--json", "watch", task_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as watcher:
        assert watcher.stdout is not None
        assert watcher.stderr is not None
        try:
            lines = []
            for line in watcher.stdout:  # mid-task: the watcher has shown part of a page
                lines.append(line)
                if "pageDelta" in json.loads(line):
                    break
            executor.stop(signal.SIGKILL)
            executor = start_executor(tmp_path, planner_process, listen)
            # The same reader to the end (communicate() would skip what it has buffered).
            lines += watcher.stdout.readlines()
            watcher.wait(timeout=60)
            stderr = watcher.stderr.read()
        finally:
            watcher.kill()
            executor.stop()

    assert watcher.returncode == 0, stderr
    seqs = [int(json.loads(line)["seq"]) for line in lines]
    assert seqs == list(range(1, len(seqs) + 1))
    assert "reconnecting" in stderr
    last = json.loads(lines[-1])
    assert last["taskStateChanged"]["state"] == "STATE_SUCCEEDED"


def test_watch_from_after_seq_prints_only_the_rest(
    tmp_path: Path, planner_process: Service
) -> None:
    executor = start_executor(tmp_path, planner_process, pace="0")
    try:
        created = mitosis("--target", executor.target, "--json", "run", TASK_TEXT)
        first_line = json.loads(created.stdout.splitlines()[0])
        task_id = first_line["taskId"]
        rest = mitosis("--target", executor.target, "--json", "watch", task_id, "--after-seq", "10")
        missing = mitosis("--target", executor.target, "watch", "0123456789abcdef")
    finally:
        executor.stop()

    total = len(created.stdout.splitlines()) - 1  # the last line is run's result
    seqs = [int(json.loads(line)["seq"]) for line in rest.stdout.splitlines()]
    assert seqs == list(range(11, total + 1))
    assert missing.returncode == 4
    assert "0123456789abcdef" in missing.stderr


def test_run_approve_waits_and_approve_runs_an_edited_plan(
    tmp_path: Path, planner_process: Service
) -> None:
    executor = start_executor(tmp_path, planner_process, pace="0")
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(
        json.dumps(
            {
                "steps": [
                    {
                        "title": "Write my notes",
                        "tool": "write_document",
                        "arguments": {"file_name": "notes.md", "title": "Notes"},
                    }
                ]
            }
        )
    )
    try:
        waiting = mitosis("--target", executor.target, "run", "--approve", TASK_TEXT)
        task_id = waiting.stderr.split("created task ")[1].split()[0]
        approved = mitosis(
            "--target", executor.target, "approve", task_id, "--plan", str(plan_file)
        )
        watched = mitosis("--target", executor.target, "watch", task_id)
        files = mitosis("--target", executor.target, "--json", "artifacts", task_id)
    finally:
        executor.stop()

    assert waiting.returncode == 9, waiting.stderr  # the plan waits for approval
    assert "task awaiting approval" in waiting.stdout
    assert f"mitosis approve {task_id}" in waiting.stderr
    assert approved.returncode == 0, approved.stderr
    assert watched.returncode == 0, watched.stderr
    assert [json.loads(line)["path"] for line in files.stdout.splitlines()] == ["notes.md"]
