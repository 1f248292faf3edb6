"""The entry point of `mitosis`: parse, run the command, map every failure to an exit status."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence

from rich.text import Text

from mitosis.cli.args import parse_args
from mitosis.cli.commands import Session, dispatch
from mitosis.cli.status import ExitStatus, status_for_error
from mitosis.cli.terminal import Terminal
from mitosis.client import ClientSettings, MitosisError, UnauthenticatedError, UnavailableError
from mitosis.client.errors import transport_hint


class WatchInterruptedError(Exception):
    """Ctrl-C while following a task; the task itself keeps running."""

    def __init__(self, task_id: str, last_seq: int) -> None:
        super().__init__(f"interrupted while watching task {task_id} after seq {last_seq}")
        self.task_id = task_id
        self.last_seq = last_seq


def program(args: argparse.Namespace, settings: ClientSettings, term: Terminal) -> ExitStatus:
    """Run the command; raise on failure (main() turns failures into statuses)."""
    session = Session()
    if settings.key_in_plain_text():
        term.note(
            f"warning: the API key goes to {settings.target} in plain text;"
            " give --tls-ca to use TLS"
        )
    try:
        return asyncio.run(dispatch(args, settings, term, session))
    except KeyboardInterrupt:
        if session.task_id is None:
            raise
        raise WatchInterruptedError(session.task_id, session.last_seq) from None


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run `mitosis` with these arguments and environment; return the exit status."""
    environ = os.environ if env is None else env
    try:
        args = parse_args(argv, environ)
    except SystemExit as exit_:  # --help, --version, or a usage error already printed
        return exit_.code if isinstance(exit_.code, int) else ExitStatus.USAGE
    term = Terminal.open(sys.stdout, sys.stderr, environ, json=args.json, plain=args.plain)
    settings: ClientSettings | None = None
    try:
        settings = ClientSettings.load(environ, target=args.target, tls_ca=args.tls_ca)
        return program(args, settings, term)
    except WatchInterruptedError as stop:
        resume = f"mitosis watch {stop.task_id} --after-seq {stop.last_seq}"
        if args.target is not None:
            resume += f" --target {args.target}"
        if args.tls_ca is not None:
            resume += f" --tls-ca {args.tls_ca}"
        term.err.print(Text(f"interrupted: task {stop.task_id} keeps running on the server."))
        term.err.print(Text(f"to resume watching: {resume}"))
        return ExitStatus.INTERRUPTED
    except KeyboardInterrupt:
        term.err.print(Text("interrupted"))
        return ExitStatus.INTERRUPTED
    except MitosisError as error:
        message = error.message
        if settings is not None and isinstance(error, UnavailableError):
            message = f"cannot reach the TaskService at {settings.target}: {message}"
            hint = transport_hint(error.message, tls=settings.tls_ca is not None)
            if hint is not None:
                message = f"{message}; {hint}"
        elif settings is not None and isinstance(error, UnauthenticatedError):
            message = f"{message} ({settings.key_hint()})"
        term.error(message)
        return status_for_error(error)
    except BrokenPipeError:  # e.g. `mitosis ls | head -1`: the reader has gone, say nothing
        _silence_stdout()
        return ExitStatus.ERROR
    except OSError as error:
        term.error(str(error))
        return ExitStatus.ERROR


def _silence_stdout() -> None:
    # Python flushes stdout at exit; point it at /dev/null so that flush cannot fail again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
