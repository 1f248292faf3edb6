"""API keys and TLS in the client library and the CLI, against the fake TaskService.

The key comes from $MITOSIS_API_KEY or the config file, goes as `authorization: Bearer <key>`
on every call (resumed watches and downloads included), and is never printed. A refused key
exits 8 and says where the key was read from.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from mitosis.cli.main import main
from mitosis.cli.status import ExitStatus
from mitosis.client import Client, ClientSettings, ConfigurationError, UnauthenticatedError
from mitosis.client.settings import is_loopback
from mitosis.rpc.auth import key_line
from tests.certs import TestAuthority
from tests.fake_task_service import AbortAfter, EndAfter, FakeTaskService, running
from tests.support.executors import StartExecutor

KEY = "mk_live_Q2hlY2sgdGhlIGtleSBuZXZlciBzaG93cw"
OTHER_KEY = "mk_live_bm90IHRoZSByaWdodCBrZXkgYXQgYWxs"


@pytest.fixture
def fake() -> FakeTaskService:
    service = FakeTaskService()
    service.api_key = KEY
    return service


@pytest.fixture
def target(fake: FakeTaskService) -> Iterator[str]:
    with running(fake) as address:
        yield address


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home folder for $HOME, with no config file yet."""
    folder = tmp_path / "home"
    folder.mkdir()
    return folder


@pytest.fixture
def authority(tmp_path: Path) -> TestAuthority:
    return TestAuthority(tmp_path / "tls")


@pytest.fixture
def tls_target(fake: FakeTaskService, authority: TestAuthority) -> Iterator[str]:
    """The fake on a TLS-only port with a certificate the test CA signed."""
    issued = authority.issue("fake task service", server=True)
    credentials = grpc.ssl_server_credentials([(issued.key.read_bytes(), issued.cert.read_bytes())])
    with running(fake, credentials) as address:
        yield address


def write_config(home: Path, text: str, mode: int = 0o600) -> Path:
    path = home / ".config" / "mitosis" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def sent(fake: FakeTaskService) -> set[str | None]:
    return {value for _, value in fake.authorizations}


# --- where the key comes from, and that it goes with every call -------------------------------


def test_the_key_from_the_environment_goes_with_every_call_resumed_watches_included(
    fake: FakeTaskService, target: str, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.script = [AbortAfter(5), EndAfter(3)]
    env = {"MITOSIS_TARGET": target, "MITOSIS_API_KEY": KEY, "HOME": str(home)}
    argv = ["--json", "run", "write a report", "--out", str(home / "out")]

    assert main(argv, env=env) == ExitStatus.SUCCESS

    methods = [method for method, _ in fake.authorizations]
    assert methods.count("WatchTask") == 3  # the first watch and two resumes
    assert {"CreateTask", "GetTask", "ReadArtifact"} <= set(methods)
    assert sent(fake) == {f"Bearer {KEY}"}
    out, err = capsys.readouterr()
    assert KEY not in out + err
    assert "warning" not in err  # loopback: no plain-text warning


def test_the_key_and_the_target_from_the_config_file(
    fake: FakeTaskService, target: str, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(home, f'api_key = "{KEY}"\ntarget = "{target}"\n')

    assert main(["ls"], env={"HOME": str(home)}) == ExitStatus.SUCCESS

    assert fake.authorizations == [("ListTasks", f"Bearer {KEY}")]
    assert KEY not in "".join(capsys.readouterr())


def test_the_environment_wins_over_the_config_file(
    fake: FakeTaskService, target: str, home: Path, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "elsewhere", f'api_key = "{OTHER_KEY}"\ntarget = "nowhere:1"\n'
    )
    env = {"MITOSIS_CONFIG": str(config), "MITOSIS_API_KEY": KEY, "MITOSIS_TARGET": target}

    assert main(["ls"], env=env) == ExitStatus.SUCCESS
    assert sent(fake) == {f"Bearer {KEY}"}


def test_the_library_loads_the_same_settings_and_sends_the_key_when_resuming(
    fake: FakeTaskService, target: str, home: Path
) -> None:
    write_config(home, f'api_key = "{KEY}"\n')
    settings = ClientSettings.load({"HOME": str(home), "MITOSIS_TARGET": target})
    fake.script = [AbortAfter(4)]

    with Client.from_settings(settings) as client:
        created = client.create_task("write a report")
        events = list(client.watch(created.task_id))

    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert fake.watch_calls == [0, 4]
    assert sent(fake) == {f"Bearer {KEY}"}
    assert KEY not in repr(settings)
    assert KEY not in repr(client)


# --- a refused key -------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["environment", "config file"])
def test_a_wrong_key_exits_8_says_where_it_came_from_and_is_never_shown(
    fake: FakeTaskService,
    target: str,
    home: Path,
    capsys: pytest.CaptureFixture[str],
    source: str,
) -> None:
    env = {"MITOSIS_TARGET": target, "HOME": str(home)}
    if source == "environment":
        env["MITOSIS_API_KEY"] = OTHER_KEY
        where = "$MITOSIS_API_KEY"
    else:
        where = str(write_config(home, f'api_key = "{OTHER_KEY}"\n'))

    for argv in (["get", "task-1"], ["--json", "run", "write"], ["watch", "t", "--json"]):
        assert main(argv, env=env) == ExitStatus.UNAUTHENTICATED
        out, err = capsys.readouterr()
        assert (out, err) == ("", f"error: unknown API key (the API key was read from {where})\n")
    assert fake.tasks == {}


def test_no_key_exits_8_and_says_how_to_give_one(
    target: str, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ls"], env={"MITOSIS_TARGET": target, "HOME": str(home)}) == 8
    err = capsys.readouterr().err
    assert err.startswith("error: this service needs an API key")
    config = home / ".config" / "mitosis" / "config.toml"
    assert f"no API key is set: set $MITOSIS_API_KEY, or api_key in {config} (chmod 600)" in err


def test_the_library_raises_unauthenticated(target: str) -> None:
    with Client(target, api_key=OTHER_KEY) as client, pytest.raises(UnauthenticatedError) as error:
        client.list_tasks()
    assert error.value.message == "unknown API key"


# --- the config file -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "words"),
    [
        (0o644, "holds an API key but other users may read it (mode 0644)"),
        (0o640, "holds an API key but other users may read it (mode 0640)"),
        (0o620, "may be changed by other users (mode 0620)"),
    ],
)
def test_a_config_file_others_may_read_or_change_is_refused(
    fake: FakeTaskService,
    target: str,
    home: Path,
    capsys: pytest.CaptureFixture[str],
    mode: int,
    words: str,
) -> None:
    config = write_config(home, f'api_key = "{KEY}"\ntarget = "{target}"\n', mode)

    assert main(["ls"], env={"HOME": str(home)}) == ExitStatus.USAGE

    err = capsys.readouterr().err
    assert err == f"error: {config} {words}; not used: run: chmod 600 {config}\n"
    assert fake.authorizations == []


def test_a_config_file_without_a_key_may_be_readable_by_others(
    fake: FakeTaskService, target: str, home: Path
) -> None:
    write_config(home, f'target = "{target}"\n', 0o644)
    assert main(["ls"], env={"HOME": str(home), "MITOSIS_API_KEY": KEY}) == 0
    assert sent(fake) == {f"Bearer {KEY}"}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (f'api_key = "{KEY}', "is not a TOML file: "),
        (f'apikey = "{KEY}"\n', "unknown setting apikey (known: api_key, target, tls_ca)"),
        ("api_key = 5\n", "api_key must be a non-empty string"),
        ('api_key = ""\n', "api_key must be a non-empty string"),
        (f'api_key = "{KEY} and more"\n', "holds characters a header cannot carry"),
    ],
)
def test_a_broken_config_file_is_a_usage_error_that_never_repeats_the_key(
    home: Path, capsys: pytest.CaptureFixture[str], text: str, words: str
) -> None:
    write_config(home, text)
    assert main(["ls"], env={"HOME": str(home)}) == ExitStatus.USAGE
    err = capsys.readouterr().err
    assert words in err
    assert err.count("\n") == 1
    assert KEY not in err


def test_a_missing_config_file_named_by_the_environment_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.toml"
    assert main(["ls"], env={"MITOSIS_CONFIG": str(missing)}) == ExitStatus.USAGE
    assert (
        capsys.readouterr().err == f"error: $MITOSIS_CONFIG names {missing}, which does not exist\n"
    )
    with pytest.raises(ConfigurationError):
        ClientSettings.load({"MITOSIS_CONFIG": str(missing)})


# --- TLS -------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["flag", "environment", "config file"])
def test_tls_with_the_ca_from_a_flag_the_environment_or_the_config_file(
    fake: FakeTaskService,
    tls_target: str,
    authority: TestAuthority,
    home: Path,
    capsys: pytest.CaptureFixture[str],
    source: str,
) -> None:
    env = {"MITOSIS_TARGET": tls_target, "HOME": str(home)}
    argv = ["ls"]
    if source == "flag":
        argv += ["--tls-ca", str(authority.cert)]
        env["MITOSIS_API_KEY"] = KEY
    elif source == "environment":
        env |= {"MITOSIS_TLS_CA": str(authority.cert), "MITOSIS_API_KEY": KEY}
    else:
        config = write_config(home, f'api_key = "{KEY}"\ntls_ca = "ca.pem"\n')
        config.with_name("ca.pem").write_bytes(authority.cert.read_bytes())  # relative to it

    assert main(argv, env=env) == ExitStatus.SUCCESS, capsys.readouterr().err
    assert fake.authorizations == [("ListTasks", f"Bearer {KEY}")]


def test_tls_needs_the_servers_ca(
    fake: FakeTaskService,
    tls_target: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    other = TestAuthority(tmp_path / "other", "another CA")
    env = {"MITOSIS_TARGET": tls_target, "MITOSIS_API_KEY": KEY}
    quick = ["--reconnect-deadline", "0.3"]

    assert main(["ls", *quick], env=env) == ExitStatus.UNAVAILABLE  # plain text to a TLS port
    assert main(["ls", "--tls-ca", str(other.cert), *quick], env=env) == ExitStatus.UNAVAILABLE
    assert fake.authorizations == []  # the key never reached the server
    assert KEY not in "".join(capsys.readouterr())


@pytest.mark.parametrize(
    ("content", "words"),
    [(None, "cannot read the TLS CA file"), (b"not a certificate", "holds no PEM certificate")],
)
def test_an_unusable_ca_file_is_a_usage_error(
    target: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes | None,
    words: str,
) -> None:
    ca = tmp_path / "ca.pem"
    if content is not None:
        ca.write_bytes(content)
    env = {"MITOSIS_TARGET": target, "MITOSIS_API_KEY": KEY}
    assert main(["ls", "--tls-ca", str(ca)], env=env) == ExitStatus.USAGE
    assert words in capsys.readouterr().err


def test_a_key_in_plain_text_beyond_this_machine_is_warned_about() -> None:
    def warns(target: str, tls_ca: Path | None = None) -> bool:
        return ClientSettings(target=target, api_key=KEY, tls_ca=tls_ca).key_in_plain_text()

    assert warns("mitosis.example:8080")
    assert warns("10.0.0.7:50051")
    assert not warns("mitosis.example:8080", Path("ca.pem"))
    for local in ("localhost:50051", "127.0.0.1:8080", "[::1]:8080", "unix:/tmp/mitosis.sock"):
        assert not warns(local)
    assert not ClientSettings(target="mitosis.example:8080").key_in_plain_text()
    assert is_loopback("dns:///localhost:50051")


def test_help_lists_the_key_settings_and_exit_8(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"], env={}) == 0
    out = capsys.readouterr().out
    for words in ("MITOSIS_API_KEY", "MITOSIS_CONFIG", "MITOSIS_TLS_CA", "--tls-ca FILE"):
        assert words in out
    assert "  8  the server wants an API key, or refused the one given" in out


# --- against a real executor with --api-keys ------------------------------------------------

ALICE_KEY = "mk_alice-cli-test-key-000000000000000000000000"
BOB_KEY = "mk_bob-cli-test-key-1111111111111111111111111111"


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "api-keys"
    path.write_text(f"{key_line('alice', ALICE_KEY)}\n{key_line('bob', BOB_KEY)}\n")
    return path


async def cli(argv: list[str], env: dict[str, str]) -> int:
    """`mitosis ...` in-process, off the loop that serves the executor."""
    return await asyncio.to_thread(main, argv, env)


async def test_the_cli_against_a_keyed_executor_over_tls(
    start_executor_on: StartExecutor,
    keys_file: Path,
    authority: TestAuthority,
    home: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    issued = authority.issue("executor", server=True)
    executor = await start_executor_on(
        f"--api-keys={keys_file}", f"--tls-cert={issued.cert}", f"--tls-key={issued.key}"
    )
    write_config(home, f'target = "127.0.0.1:{executor.port}"\ntls_ca = "{authority.cert}"\n')
    alice = {"HOME": str(home), "MITOSIS_API_KEY": ALICE_KEY}
    bob = {"HOME": str(home), "MITOSIS_API_KEY": BOB_KEY}

    printed: list[str] = []

    def output() -> tuple[str, str]:
        out, err = capsys.readouterr()
        printed.extend((out, err))
        return out, err

    # Alice's key runs a task end to end and downloads its files.
    out = home / "out"
    assert await cli(["--json", "run", "Write a haiku about keys", "--out", str(out)], alice) == 0
    events = [json.loads(line) for line in output()[0].splitlines()]
    events = [event for event in events if "seq" in event]
    assert events[-1]["taskStateChanged"]["state"] == "STATE_SUCCEEDED"
    task_id = str(events[0]["taskId"])
    assert list(out.rglob("*.md"))

    # Bob's key does not find it, and does not see it listed.
    assert await cli(["get", task_id], bob) == ExitStatus.NOT_FOUND
    assert await cli(["--json", "ls"], bob) == 0
    assert task_id not in output()[0]
    assert await cli(["--json", "ls"], alice) == 0
    assert task_id in output()[0]

    # A wrong key and no key: exit 8, in the executor's words, with where the key came from.
    wrong = {**alice, "MITOSIS_API_KEY": "mk_not-a-key-at-all"}
    assert await cli(["get", task_id], wrong) == ExitStatus.UNAUTHENTICATED
    assert output()[1] == "error: unknown API key (the API key was read from $MITOSIS_API_KEY)\n"
    assert await cli(["ls"], {"HOME": str(home)}) == ExitStatus.UNAUTHENTICATED
    err = output()[1]
    assert err.startswith("error: this service needs an API key")
    assert "no API key is set" in err
    for key in (ALICE_KEY, BOB_KEY):
        assert key not in "".join(printed)
