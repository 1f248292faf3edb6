"""What each `mitosis` command does, on an AsyncClient; errors are left to main()."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format
from rich.text import Text

from mitosis.cli.describe import artifact_line, run_result, summary_lines, task_lines, task_row
from mitosis.cli.labels import counted, describe_model
from mitosis.cli.plain import json_line
from mitosis.cli.progress import TaskProgress
from mitosis.cli.status import ExitStatus, status_for_task
from mitosis.cli.terminal import Mode, Terminal
from mitosis.cli.untrusted import clean_line
from mitosis.client import ArtifactExistsError, AsyncClient, ClientSettings, MitosisError
from mitosis.v1 import plan_pb2, task_pb2

Task = task_pb2.Task


@dataclass
class Session:
    """The task being watched and the last seq shown: what a resume after Ctrl-C needs."""

    task_id: str | None = None
    last_seq: int = 0
    final: task_pb2.Task | None = None
    """The task as the watch left it: ended, or waiting for approval."""


Command = Callable[[AsyncClient, argparse.Namespace, Terminal, Session], Awaitable[ExitStatus]]


async def dispatch(
    args: argparse.Namespace, settings: ClientSettings, term: Terminal, session: Session
) -> ExitStatus:
    """Run the command the arguments name, with a client as the settings say."""
    client = AsyncClient.from_settings(settings, reconnect_deadline=args.reconnect_deadline)
    async with client:
        return await COMMANDS[args.command](client, args, term, session)


async def run(
    client: AsyncClient, args: argparse.Namespace, term: Terminal, session: Session
) -> ExitStatus:
    """Create a task, follow it to its end, then download its files if --out was given."""
    words: list[str] = args.text
    text = sys.stdin.read() if words == ["-"] else " ".join(words)
    task = await client.create_task(text, require_approval=args.approve)
    session.task_id = task.task_id
    term.note(f"created task {clean_line(task.task_id)} (model: {describe_model(task.model)})")
    if args.detach:
        _print_result(term, task, [Text(clean_line(task.task_id))])
        term.note(f"it runs on; follow it with: mitosis watch {clean_line(task.task_id)}")
        return ExitStatus.SUCCESS
    after_seq = 0
    if args.approve:
        ended = await follow(client, task, 0, term, session, stop_at_approval=True)
        if ended is not None:
            _print_run_result(term, session, [])
            return ended  # the task ended before its plan was ready
        if not _confirm(term, "Run this plan?"):
            term.note(
                f"the plan waits; run it with: mitosis approve {clean_line(task.task_id)}"
                f" (or: mitosis cancel {clean_line(task.task_id)})"
            )
            waiting = await client.get_task(task.task_id)
            session.final = waiting
            _print_run_result(term, session, [])
            return status_for_task(waiting.state)
        await client.approve_plan(task.task_id)
        after_seq = session.last_seq
    status = await follow(client, task, after_seq, term, session)
    assert status is not None
    saved: list[Path] = []
    if args.out is not None:
        saved = await download(
            client, task.task_id, Path(args.out), term, force=args.force, quiet=True
        )
    _print_run_result(term, session, saved)
    return status


async def watch(
    client: AsyncClient, args: argparse.Namespace, term: Terminal, session: Session
) -> ExitStatus:
    """Follow an existing task to its end."""
    task = await client.get_task(args.task_id)
    status = await follow(client, task, args.after_seq, term, session)
    assert status is not None
    return status


async def follow(
    client: AsyncClient,
    task: task_pb2.Task,
    after_seq: int,
    term: Terminal,
    session: Session,
    *,
    stop_at_approval: bool = False,
) -> ExitStatus | None:
    """Show the task's events after `after_seq` until its end; print a summary; exit as it ended.

    With `stop_at_approval`, return None instead once the plan awaits approval.
    """
    session.task_id, session.last_seq = task.task_id, after_seq
    progress = TaskProgress(task)
    with term.view(progress) as view:
        events = client.watch(task.task_id, after_seq, on_state=view.on_state)
        async with aclosing(events):
            async for event in events:
                view.on_event(event)
                session.last_seq = event.seq
                awaiting = event.task_state_changed.state == Task.STATE_AWAITING_APPROVAL
                if stop_at_approval and awaiting:
                    return None
    try:
        final = await client.get_task(task.task_id)
    except MitosisError:  # the summary from the events is good enough
        final = progress.task
    for line in summary_lines(final):
        term.err.print(line)
    ended = progress.final.state if progress.final is not None else final.state
    final.state = ended
    session.final = final
    return status_for_task(ended)


async def download(
    client: AsyncClient,
    task_id: str,
    out: Path,
    term: Terminal,
    *,
    force: bool = False,
    quiet: bool = False,
) -> list[Path]:
    """Download the task's files under `out` and print where each went (with `quiet`, in
    JSON mode, the caller prints them in its result instead). Without `force` a file that
    exists already is refused before anything is written."""
    try:
        paths = await client.download_artifacts(task_id, out, overwrite=force)
    except ArtifactExistsError as exists:
        raise MitosisError(f"{exists.path} exists already; give --force to overwrite it") from None
    for path in paths:
        size = path.stat().st_size
        if term.mode is Mode.JSON:
            if not quiet:
                term.stdout.write(json.dumps({"path": str(path), "sizeBytes": size}) + "\n")
        else:
            term.out.print(Text(f"saved {clean_line(str(path))} ({counted(size, 'byte')})"))
    return paths


def _print_run_result(term: Terminal, session: Session, saved: list[Path]) -> None:
    """With --json, end `run`'s output with one result object: state, files, usage."""
    if term.mode is not Mode.JSON or session.final is None:
        return
    term.stdout.write(json.dumps({"result": run_result(session.final, saved)}) + "\n")
    term.stdout.flush()


async def list_tasks(
    client: AsyncClient, args: argparse.Namespace, term: Terminal, session: Session
) -> ExitStatus:
    """List tasks, one line (or JSON object) each; follow page tokens with --all."""
    token: str = args.page_token
    while True:
        view = task_pb2.Task.VIEW_FULL if args.full else task_pb2.Task.VIEW_BASIC
        page = await client.list_tasks(args.page_size, token, view=view)
        for task in page.tasks:
            _print_result(term, task, [task_row(task)])
        if not page.tasks and not page.next_page_token:
            term.note("no more tasks" if token else "no tasks yet")
            return ExitStatus.SUCCESS
        token = page.next_page_token
        if not token:
            return ExitStatus.SUCCESS
        if not args.all:
            size = f" --page-size {args.page_size}" if args.page_size else ""
            full = " --full" if args.full else ""
            term.note(f"more tasks: mitosis ls{size}{full} --page-token {token}")
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
        await download(client, args.task_id, Path(args.out), term, force=args.force)
        return ExitStatus.SUCCESS
    task = await client.get_task(args.task_id)
    for artifact in task.artifacts:
        _print_result(term, artifact, [artifact_line(artifact)])
    if not task.artifacts:
        term.note(f"task {clean_line(task.task_id)} has delivered no files")
    return ExitStatus.SUCCESS


async def delete(
    client: AsyncClient, args: argparse.Namespace, term: Terminal, session: Session
) -> ExitStatus:
    """Delete a task with its events and files (a running one is cancelled first)."""
    await client.delete_task(args.task_id)
    if term.mode is Mode.JSON:
        term.stdout.write(json.dumps({"taskId": args.task_id, "deleted": True}) + "\n")
    else:
        term.out.print(Text(f"deleted task {clean_line(args.task_id)}"))
    return ExitStatus.SUCCESS


async def approve(
    client: AsyncClient, args: argparse.Namespace, term: Terminal, session: Session
) -> ExitStatus:
    """Run a plan that awaits approval, as proposed or as edited in a JSON file."""
    plan = None
    if args.plan is not None:
        read = sys.stdin.read if args.plan == "-" else Path(args.plan).read_text
        source = await asyncio.to_thread(read)
        try:
            plan = json_format.Parse(source, plan_pb2.Plan())
        except json_format.ParseError as error:
            raise MitosisError(f"{args.plan} is not a plan in JSON: {error}") from error
    task = await client.approve_plan(args.task_id, plan)
    _print_result(term, task, task_lines(task))
    term.note(f"follow it with: mitosis watch {clean_line(task.task_id)}")
    return ExitStatus.SUCCESS


def _confirm(term: Terminal, question: str) -> bool:
    """Ask a yes/no question on a terminal; anywhere else the answer is no."""
    if not sys.stdin.isatty() or term.mode is Mode.JSON:
        return False
    term.err.print(Text(f"{question} [y/N] "), end="")
    return sys.stdin.readline().strip().lower() in ("y", "yes")


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
    "approve": approve,
    "watch": watch,
    "ls": list_tasks,
    "get": get,
    "cancel": cancel,
    "delete": delete,
    "artifacts": artifacts,
}
