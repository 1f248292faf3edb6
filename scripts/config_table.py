"""Write the README's configuration table from the services' own parsers.

Every setting of the planner and the executor is defined once, with `add_setting`
(mitosis.rpc.settings): its flag, its environment variable, its default and what it does.
This script reads them from the parsers, adds the variables `make run` reads itself
(scripts/run.py, VARIABLES), and writes the table between the two marker comments of
README.md; `--check` only says whether the README is up to date (tests/test_config_table.py
runs it).

    .venv/bin/python scripts/config_table.py          # rewrite the table in README.md
    .venv/bin/python scripts/config_table.py --check  # exit 1 when README.md differs
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

from mitosis.executor.server import argument_parser as executor_parser
from mitosis.planner.server import argument_parser as planner_parser
from mitosis.rpc.settings import environment_only, settings_of

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BEGIN = "<!-- configuration table: begin (scripts/config_table.py writes it) -->"
END = "<!-- configuration table: end -->"


@dataclass
class Row:
    """One variable of the table."""

    variable: str
    flag: str
    default: str
    what: str
    used_by: list[str]

    def markdown(self) -> str:
        cells = [
            f"`{self.variable}`",
            f"`{self.flag}`" if self.flag else "",
            self.default,
            ", ".join(self.used_by),
            _cell(self.what),
        ]
        return "| " + " | ".join(cells) + " |"


def _value(default: str) -> str:
    """A default as the table shows it: a value in code, words ("off", "the plan model") not."""
    if default in ("none", "off", "on") or " " in default:
        return default
    return f"`{default}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def rows() -> list[Row]:
    """The table's rows: the services' settings in their --help order, then make run's."""
    found: dict[str, Row] = {}
    # A clean environment: the defaults are the built-in ones, whatever the shell has.
    for service, parser in (("executor", executor_parser({})), ("planner", planner_parser({}))):
        for setting in settings_of(parser):
            row = found.setdefault(
                setting.env_var,
                Row(setting.env_var, setting.flag, _value(setting.default), setting.what, []),
            )
            row.used_by.append(service)
        for variable in environment_only(parser):
            row = found.setdefault(
                variable.env_var, Row(variable.env_var, "", "none", variable.what, [])
            )
            row.used_by.append(service)
    for variable, default, what in _make_run_variables():
        row = found.setdefault(variable, Row(variable, "", _value(default), what, []))
        row.used_by.append("`make run`")
    return list(found.values())


def _make_run_variables() -> list[tuple[str, str, str]]:
    """scripts/run.py's VARIABLES, read as the literal it is (importing it would set up
    `make run`)."""
    tree = ast.parse((ROOT / "scripts" / "run.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "VARIABLES" for target in node.targets
        ):
            variables: list[tuple[str, str, str]] = list(ast.literal_eval(node.value))
            return variables
    raise SystemExit("scripts/run.py has no VARIABLES")


def table() -> str:
    """The table as markdown, between its markers."""
    lines = [
        BEGIN,
        "| variable | flag | default | read by | what |",
        "| --- | --- | --- | --- | --- |",
        *(row.markdown() for row in rows()),
        END,
    ]
    return "\n".join(lines)


def with_table(readme: str) -> str:
    """The README's text with its table replaced by the one the parsers give."""
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{README}: no {BEGIN!r} … {END!r} markers")
    return readme[:start] + table() + readme[end + len(END) :]


def main(argv: list[str] | None = None) -> int:
    """Rewrite README.md's table, or with --check say whether it is up to date."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if it differs")
    args = parser.parse_args(argv)
    readme = README.read_text(encoding="utf-8")
    wanted = with_table(readme)
    if args.check:
        if wanted != readme:
            print("README.md's configuration table differs: run scripts/config_table.py")
            return 1
        return 0
    if wanted != readme:
        README.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
