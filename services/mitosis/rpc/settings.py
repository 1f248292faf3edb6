"""Settings of the services: each one a flag, an environment variable and a default.

`add_setting` is the one way a service's argument is defined: the environment variable
gives the default, the flag wins over it, and `--help` shows both the variable and the
built-in default. `settings_of` reads them back from a parser, for the README's table
(`scripts/config_table.py`), so the help, the code and the document cannot drift apart.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

_ENV = "mitosis_env_var"
_DEFAULT = "mitosis_default_text"
_ENVIRONMENT_ONLY = "mitosis_environment_only"


ArgumentContainer = argparse._ActionsContainer
"""A parser or one of its argument groups (argparse names their common base privately)."""


@dataclass(frozen=True)
class Setting:
    """One setting as `--help` shows it."""

    flag: str
    env_var: str
    default: str
    what: str


@dataclass(frozen=True)
class EnvironmentOnly:
    """A setting with no flag on purpose: a secret, which a flag would show in `ps`."""

    env_var: str
    what: str


def add_setting(
    container: ArgumentContainer,
    flag: str,
    env_var: str,
    env: Mapping[str, str],
    *,
    help: str,
    default: Any = None,
    default_text: str | None = None,
    **options: Any,
) -> argparse.Action:
    """Add `flag`, its default taken from `env_var` when that is set, else `default`.

    A string default is parsed by the flag's `type` as argparse does for any string default,
    so a malformed variable is refused the way a malformed flag is. A switch
    (`action="store_true"`) is on when the variable is set to anything but "" or "0".
    `default_text` is what the help says the default is, when `default` alone would not say
    it well ("off", "the plan model").
    """
    given = env.get(env_var)
    switch = options.get("action") == "store_true"
    if switch:
        initial: Any = given not in ("", "0") if given is not None else bool(default)
    else:
        initial = given if given not in (None, "") else default
    shown = default_text if default_text is not None else _shown(default, switch)
    action = container.add_argument(
        flag, default=initial, help=f"{help} (env {env_var}; default {shown})", **options
    )
    setattr(action, _ENV, env_var)
    setattr(action, _DEFAULT, shown)
    return action


def _shown(default: Any, switch: bool) -> str:
    if switch:
        return "on" if default else "off"
    if default is None or default == "":
        return "none"
    return str(default)


def settings_of(parser: argparse.ArgumentParser) -> Iterator[Setting]:
    """The parser's settings, in the order `--help` shows them (built-in defaults)."""
    for action in parser._actions:  # argparse keeps no public list of its actions
        env_var = getattr(action, _ENV, None)
        if env_var is None:
            continue
        what = (action.help or "").rsplit(" (env ", 1)[0]
        yield Setting(action.option_strings[-1], env_var, getattr(action, _DEFAULT), what)


def unset_flags(parser: argparse.ArgumentParser) -> list[str]:
    """The options of the parser that have no environment variable (`--help` aside)."""
    return [
        action.option_strings[-1]
        for action in parser._actions
        if action.option_strings
        and not isinstance(action, argparse._HelpAction)
        and getattr(action, _ENV, None) is None
    ]


def add_environment_only(parser: argparse.ArgumentParser, variables: list[EnvironmentOnly]) -> None:
    """Name, at the end of `--help`, the settings read from the environment only."""
    setattr(parser, _ENVIRONMENT_ONLY, [*environment_only(parser), *variables])
    named = "; ".join(f"{v.env_var}: {v.what}" for v in environment_only(parser))
    parser.epilog = f"Read from the environment only (a flag would show in ps): {named}."


def environment_only(parser: argparse.ArgumentParser) -> list[EnvironmentOnly]:
    """The settings `add_environment_only` gave the parser."""
    variables: list[EnvironmentOnly] = getattr(parser, _ENVIRONMENT_ONLY, [])
    return variables
