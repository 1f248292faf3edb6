"""What each `mitosis` command does, on an AsyncClient; errors are left to main()."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text

from mitosis.cli.describe import artifact_line, summary_lines, task_lines, task_row
from mitosis.cli.labels import describe_model
from mitosis.cli.plain import json_line
from mitosis.cli.progress import TaskProgress
from mitosis.cli.status import ExitStatus, status_for_task
from mitosis.cli.terminal import Mode, Terminal
from mitosis.cli.untrusted import clean_line
from mitosis.client import AsyncClient, MitosisError
from mitosis.v1 import task_pb2


@dataclass
class Session:
    """The task being watched and the last seq shown: what a resume after Ctrl-C needs."""

    task_id: str | None = None
    last_seq: int = 0


Command = Callable[[AsyncClient, argparse.Namespace, Terminal, Session], Awaitable[ExitStatus]]


async def dispatch(args: argparse.Namespace, term: Terminal, session: Session) -> ExitStatus:
    """Run the command the arguments name."""
    async with AsyncClient(args.target, reconnect_deadline=args.reconnect_deadline) as client:
        return await COMMANDS[args.command](client, args, term, session)


async def run(
    client: AsyncClient, args: argparse.Namespace, term: Terminal, session: Session
) -> ExitStatus:
    """Create a task, follow it to its end, then download its files if --out was given."""
    words: list[str] = args.text
    text = sys.stdin.read() if words == ["-"] else " ".join(words)
    task = await client.create_task(text)
    session.task_id = task.task_id
    term.note(f"created task {clean_line(task.task_id)} (model: {describe_model(task.model)})")
    if args.detach:
        _print_result(term, task, [Text(task.task_id)])
        term.note(f"it runs on; follow it with: mitosis watch {clean_line(task.task_id)}")
        return ExitStatus.SUCCESS
    status = await follow(client, task, 0, term, session)
    if args.out is not None:
        await download(client, task.task_id, Path(args.out), term)
    return status


async def watch(
    client: AsyncClient, args: argparse.Namespace, term: Terminal, session: Session
) -> ExitStatus:
    """Follow an existing task to its end."""
    task = await client.get_task(args.task_id)
    return await follow(client, task, args.after_seq, term, session)


async def follow(
    client: AsyncClient, task: task_pb2.Task, after_seq: int, term: Terminal, session: Session
) -> ExitStatus:
    """Show the task's events after `after_seq` until its end; print a summary; exit as it ended."""
    session.task_id, session.last_seq = task.task_id, after_seq
    progress = TaskProgress(task)
    with term.view(progress) as view:
        events = client.watch(task.task_id, after_seq, on_state=view.on_state)
        async with aclosing(events):
            async for event in events:
                view.on_event(event)
                session.last_seq = event.seq
    try:
        final = await client.get_task(task.task_id)
    except MitosisError:  # the summary from the events is good enough
        final = progress.task
    for line in summary_lines(final):
        term.err.print(line)
    ended = progress.final.state if progress.final is not None else final.state
    return status_for_task(ended)


async def download(client: AsyncClient, task_id: str, out: Path, term: Terminal) -> None:
    """Download the task's files under `out` and print where each went."""
    for path in await client.download_artifacts(task_id, out):
        size = path.stat().st_size
        if term.mode is Mode.JSON:
            term.stdout.write(json.dumps({"path": str(path), "sizeBytes": size}) + "\n")
        else:
            term.out.print(Text(f"saved {path} ({size} bytes)"))


async def list_tasks(
    client: AsyncClient, args: argparse.Namespace, term: Terminal, session: Session
) -> ExitStatus:
    """List tasks, one line (or JSON object) each; follow page tokens with --all."""
    token: str = args.page_token
    while True:
        page = await client.list_tasks(args.page_size, token)
        for task in page.tasks:
            _print_result(term, task, [task_row(task)])
        token = page.next_page_token
        if not token:
            return ExitStatus.SUCCESS
        if not args.all:
            size = f" --page-size {args.page_size}" if args.page_size else ""
            term.note(f"more tasks: mitosis ls{size} --page-token {token}")
            return ExitStatus.SUCCESS


async def get(
    client: AsyncClient, args: argparse.Namespace, term: Terminal, session: Session
) -> ExitStatus:
    """Show one task."""
    task = await client.get_task(args.task_id)
    _print_result(term, task, task_lines(task))
    return ExitStatus.SUCCESS


async def cancel(
    client: AsyncClient, args: argparse.Namespace, term: Terminal, session: Session
) -> ExitStatus:
    """Cancel a running task and show it."""
    task = await client.cancel_task(args.task_id)
    _print_result(term, task, task_lines(task))
    return ExitStatus.SUCCESS


async def artifacts(
    client: AsyncClient, args: argparse.Namespace, term: Terminal, session: Session
) -> ExitStatus:
    """List a task's files, or download them with --out."""
    if args.out is not None:
        await download(client, args.task_id, Path(args.out), term)
        return ExitStatus.SUCCESS
    task = await client.get_task(args.task_id)
    for artifact in task.artifacts:
        _print_result(term, artifact, [artifact_line(artifact)])
    if not task.artifacts:
        term.note(f"task {clean_line(task.task_id)} has delivered no files")
    return ExitStatus.SUCCESS


def _print_result(
    term: Terminal, message: task_pb2.Task | task_pb2.Artifact, lines: list[Text]
) -> None:
    if term.mode is Mode.JSON:
        term.stdout.write(json_line(message) + "\n")
    else:
        for line in lines:
            term.out.print(line)


COMMANDS: dict[str, Command] = {
    "run": run,
    "watch": watch,
    "ls": list_tasks,
    "get": get,
    "cancel": cancel,
    "artifacts": artifacts,
}
