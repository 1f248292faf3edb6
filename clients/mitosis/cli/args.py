"""The command line of `mitosis`: commands, options and their help."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from importlib import metadata

from mitosis.cli.status import epilog
from mitosis.client.settings import DEFAULT_TARGET

DESCRIPTION = """\
Run tasks on Mitosis and watch them work, live.

Every command talks to the TaskService at --target. `run` and `watch` follow a task's event
log to its end, resuming from the last event seen whenever the connection breaks, so each
event is shown once and in order. Results go to stdout; progress, connection state and
errors go to stderr. On a terminal you get a live view; otherwise (or with --plain) one line
per event; with --json one JSON object per line (proto3 JSON: camelCase names, int64 values
such as seq as strings).
"""

ENVIRONMENT = """\
environment:
  MITOSIS_TARGET   the default for --target
  MITOSIS_API_KEY  the API key, sent as `authorization: Bearer <key>` on every call
  MITOSIS_TLS_CA   the default for --tls-ca
  MITOSIS_CONFIG   the config file (default ~/.config/mitosis/config.toml)
  NO_COLOR         set (non-empty) to turn colour off
  TTY_INTERACTIVE  0 to turn the live view off even on a terminal

config file (TOML; what the environment does not set):
  api_key = "..."          # the file must then be readable by you alone (chmod 600)
  target = "host:port"
  tls_ca = "ca.pem"        # relative to the file's folder
"""

TASK_ID_HELP = "the task's id, as `run` and `ls` print it"


def _version() -> str:
    try:
        return metadata.version("mitosis")
    except metadata.PackageNotFoundError:
        return "unknown"


def _seconds(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _common_options(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """Options accepted before or after the command; SUPPRESS keeps a later one from undoing
    an earlier one."""
    common = argparse.ArgumentParser(add_help=False)
    now = f" (now: {env['MITOSIS_TARGET']})" if env.get("MITOSIS_TARGET") else ""
    group = common.add_argument_group("common options")
    group.add_argument(
        "--target",
        metavar="HOST:PORT",
        default=argparse.SUPPRESS,
        help=(
            "the TaskService (or Envoy) to talk to; default: $MITOSIS_TARGET, else the config"
            f" file's target, else {DEFAULT_TARGET}{now}"
        ),
    )
    group.add_argument(
        "--tls-ca",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=(
            "talk TLS, trusting the CA certificate(s) in this PEM file; default: "
            "$MITOSIS_TLS_CA, else the config file's tls_ca, else plain text"
        ),
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print events and results to stdout as one JSON object per line",
    )
    group.add_argument(
        "--plain",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print plain lines even on a terminal (no live view)",
    )
    group.add_argument(
        "--reconnect-deadline",
        metavar="SECONDS",
        type=_seconds,
        default=argparse.SUPPRESS,
        help=(
            "give up (exit 6) when the server stays unreachable this long; default: "
            "watches retry forever, other calls give up after 10 s"
        ),
    )
    return common


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """Return the parser of `mitosis`, with defaults taken from `env`."""
    # Each parser gets its own copy: set_defaults() below would otherwise reach the
    # subcommands' shared actions and undo an option given before the command.
    parser = argparse.ArgumentParser(
        prog="mitosis",
        description=DESCRIPTION,
        epilog=ENVIRONMENT + "\n" + epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common_options(env)],
    )
    parser.set_defaults(
        target=None,
        tls_ca=None,
        json=False,
        plain=False,
        reconnect_deadline=None,
    )
    parser.add_argument("--version", action="version", version=f"mitosis {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, details: str = "") -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=summary,
            description=summary + ("\n\n" + details if details else ""),
            epilog=epilog(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[_common_options(env)],
        )
        sub.set_defaults(command=name)
        return sub

    run = command(
        "run",
        "create a task, watch it to its end, then optionally download its files",
        "Exits 0 if the task succeeded, 1 if it failed, 3 if it was cancelled, and with\n"
        "--approve 9 if the plan waits for approval. Ctrl-C stops watching but not the task;\n"
        "the command to resume is printed. With --json the last line is one result object:\n"
        '{"result": {"taskId", "state", "files", "usage", "error", "saved"}}.',
    )
    run.add_argument(
        "text", nargs="+", metavar="TEXT", help="the task, in plain words ('-': stdin)"
    )
    run.add_argument("--out", metavar="DIR", help="download the task's files into DIR at the end")
    run.add_argument(
        "--force", action="store_true", help="with --out, overwrite files that exist in DIR"
    )
    run.add_argument(
        "--detach",
        action="store_true",
        help="print the new task's id (with --json: the task) and exit 0 without watching",
    )
    run.add_argument(
        "--approve",
        action="store_true",
        help="stop once the plan is ready and ask before any step runs (on a terminal;"
        " elsewhere, or if the answer is no, the plan waits for `mitosis approve` and run"
        " exits 9)",
    )

    watch = command(
        "watch",
        "watch a task's events until it ends (from the start, or after a seq)",
        "Exits 0 if the task succeeded, 1 if it failed, 3 if it was cancelled.",
    )
    watch.add_argument("task_id", metavar="TASK_ID", help=TASK_ID_HELP)
    watch.add_argument(
        "--after-seq",
        metavar="N",
        type=_count,
        default=0,
        help="show only events after seq N (as printed when a watch is interrupted)",
    )

    ls = command("ls", "list tasks, newest first")
    ls.add_argument(
        "--page-size",
        metavar="N",
        type=_count,
        default=0,
        help="tasks per page (default: the server's, 50)",
    )
    ls.add_argument("--page-token", metavar="TOKEN", default="", help="the page to start at")
    ls.add_argument("--all", action="store_true", help="follow page tokens to the last task")
    ls.add_argument(
        "--full",
        action="store_true",
        help="with --json, whole tasks (steps, pages, files) as `get` prints them; without it"
        " only the id, text, state, model, times and owner",
    )

    approve = command(
        "approve",
        "run a plan that awaits approval (a task made with run --approve)",
        'FILE holds a plan as JSON, e.g. {"steps": [{"title": "Write it", "tool":\n'
        '"write_document", "arguments": {"file_name": "a.md"}}]}; without it the\n'
        "proposed plan runs.",
    )
    approve.add_argument("task_id", metavar="TASK_ID", help=TASK_ID_HELP)
    approve.add_argument(
        "--plan", metavar="FILE", help="run this plan instead of the proposed one ('-': stdin)"
    )

    get = command("get", "show a task: state, model, steps, pages, files, error")
    get.add_argument("task_id", metavar="TASK_ID", help=TASK_ID_HELP)

    cancel = command("cancel", "cancel a running task (exit 5 if it has already ended)")
    cancel.add_argument("task_id", metavar="TASK_ID", help=TASK_ID_HELP)

    delete = command(
        "delete",
        "delete a task: its record, events and files (a running task is cancelled first)",
        "Exits 4 if there is no such task (or it was deleted already).",
    )
    delete.add_argument("task_id", metavar="TASK_ID", help=TASK_ID_HELP)

    artifacts = command(
        "artifacts",
        "list a task's files, or download them with --out",
        "Downloads are checked against the SHA-256 the task recorded; paths that would\n"
        "leave DIR are refused, and so are files that exist in DIR unless --force is given\n"
        "(exit 7, naming the file, before anything is written).",
    )
    artifacts.add_argument("task_id", metavar="TASK_ID", help=TASK_ID_HELP)
    artifacts.add_argument("--out", metavar="DIR", help="download the files into DIR")
    artifacts.add_argument("--force", action="store_true", help="overwrite files that exist in DIR")
    return parser


def parse_args(argv: Sequence[str] | None, env: Mapping[str, str]) -> argparse.Namespace:
    """Parse the command line; argparse's SystemExit carries --help, --version and misuse."""
    return build_parser(env).parse_args(argv)
