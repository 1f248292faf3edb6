"""One source for configuration: every setting has a flag, a variable and a default, all in
`--help`, and the README's table is what the parsers say."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from mitosis.executor.server import argument_parser as executor_parser
from mitosis.planner.server import argument_parser as planner_parser
from mitosis.rpc.settings import settings_of, unset_flags

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import config_table  # noqa: E402  # a script, not a package

PARSERS = {"executor": executor_parser, "planner": planner_parser}


@pytest.mark.parametrize("service", PARSERS)
def test_every_flag_has_an_environment_variable(service: str) -> None:
    assert unset_flags(PARSERS[service]({})) == []


@pytest.mark.parametrize("service", PARSERS)
def test_help_shows_each_variable_and_default(service: str) -> None:
    parser = PARSERS[service]({})
    text = " ".join(parser.format_help().split())
    for setting in settings_of(parser):
        assert f"(env {setting.env_var}; default {setting.default})" in text, setting.flag


def test_every_variable_the_services_read_is_a_setting() -> None:
    """No MITOSIS_* variable is read past the parsers: grep the services for them."""
    declared = {setting.env_var for make in PARSERS.values() for setting in settings_of(make({}))}
    read: set[str] = set()
    for module in (ROOT / "services" / "mitosis").rglob("*.py"):
        if "v1" in module.parts or "gateway" in module.parts:
            continue  # generated code; the gateway has a command of its own
        read |= set(re.findall(r"\"(MITOSIS_[A-Z_]+)\"", module.read_text()))
    assert read - declared == set()


def test_a_variable_sets_the_default_and_the_flag_wins() -> None:
    env = {"MITOSIS_TOOL_TIMEOUT": "7", "MITOSIS_GRACE": "2", "MITOSIS_FETCH_URL": "1"}
    from_env = executor_parser(env).parse_args([])
    assert (from_env.tool_timeout, from_env.grace, from_env.fetch_url) == (7.0, 2.0, True)
    flagged = executor_parser(env).parse_args(["--tool-timeout=9", "--grace=1"])
    assert (flagged.tool_timeout, flagged.grace) == (9.0, 1.0)


def test_a_malformed_variable_is_refused_as_a_malformed_flag_is(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        executor_parser({"MITOSIS_LEASE_TTL": "soon"}).parse_args([])
    assert "--lease-ttl: invalid float value: 'soon'" in capsys.readouterr().err


def test_the_readme_table_is_what_the_parsers_say() -> None:
    readme = (ROOT / "README.md").read_text()
    assert config_table.with_table(readme) == readme, (
        "README.md's configuration table is stale: run .venv/bin/python scripts/config_table.py"
    )


def test_the_table_names_make_runs_own_variables() -> None:
    rows = {row.variable: row for row in config_table.rows()}
    assert rows["MITOSIS_CLUSTER_REDIS"].used_by == ["`make run`"]
    assert rows["MITOSIS_TLS_CERT"].used_by == ["executor", "planner"]
