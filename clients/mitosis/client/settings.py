"""Where a client finds its server, its API key and its TLS CA: flags, environment, config file.

Each setting is taken from the first of: the caller's explicit value (a command-line flag),
the environment, the config file ($MITOSIS_CONFIG, else ~/.config/mitosis/config.toml). The
API key is read from the environment or the config file only, never from a flag: flags show
in `ps` and in shell history. A config file that holds a key must be readable by its owner
alone, as ssh insists for private keys; one that others may change is refused too, since its
`target` and `tls_ca` decide where the key goes. The key never appears in a repr, a message
or a log line.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mitosis.client.errors import ConfigurationError

API_KEY_ENV = "MITOSIS_API_KEY"
CONFIG_ENV = "MITOSIS_CONFIG"
TARGET_ENV = "MITOSIS_TARGET"
TLS_CA_ENV = "MITOSIS_TLS_CA"
DEFAULT_TARGET = "localhost:50051"
CONFIG_KEYS = ("api_key", "target", "tls_ca")
"""The settings a config file may hold."""


@dataclass(frozen=True)
class ClientSettings:
    """How to reach Mitosis: the target, the API key (if any) and the TLS CA (if any)."""

    target: str = DEFAULT_TARGET
    api_key: str | None = field(default=None, repr=False)
    """The bearer key sent on every call; never shown (left out of repr)."""
    key_source: str = ""
    """Where the key came from, for messages: "$MITOSIS_API_KEY" or the config file's path."""
    tls_ca: Path | None = None
    """A PEM file of the CA that signed the server's certificate; None: plain text (h2c)."""
    config_path: Path | None = None
    """The config file consulted (it need not exist); None when there is none to consult."""

    @classmethod
    def load(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        target: str | None = None,
        tls_ca: str | Path | None = None,
    ) -> ClientSettings:
        """Resolve the settings from explicit values, then `env` (default os.environ), then
        the config file. Raises ConfigurationError for a config file that is unsafe or wrong.
        """
        environ = os.environ if env is None else env
        config_path = config_file_path(environ)
        config = read_config(config_path, required=bool(environ.get(CONFIG_ENV)))
        api_key, key_source = None, ""
        if environ.get(API_KEY_ENV):
            api_key, key_source = environ[API_KEY_ENV], f"${API_KEY_ENV}"
        elif "api_key" in config:
            api_key, key_source = config["api_key"], str(config_path)
        if api_key is not None:
            api_key = checked_api_key(api_key, key_source)
        ca: Path | None = None
        if tls_ca:
            ca = Path(tls_ca).expanduser()
        elif environ.get(TLS_CA_ENV):
            ca = Path(environ[TLS_CA_ENV]).expanduser()
        elif "tls_ca" in config and config_path is not None:
            # A relative path in the file is relative to the file, not to where we run.
            ca = config_path.parent / Path(config["tls_ca"]).expanduser()
        return cls(
            target=target or environ.get(TARGET_ENV) or config.get("target") or DEFAULT_TARGET,
            api_key=api_key,
            key_source=key_source,
            tls_ca=ca,
            config_path=config_path,
        )

    def key_hint(self) -> str:
        """Say where the key was read from, or how to give one; for error messages."""
        if self.api_key is not None:
            return f"the API key was read from {self.key_source}"
        where = f"api_key in {self.config_path}" if self.config_path else f"${CONFIG_ENV}"
        return f"no API key is set: set ${API_KEY_ENV}, or {where} (chmod 600)"

    def key_in_plain_text(self) -> bool:
        """True when a key would travel unencrypted beyond this machine."""
        return self.api_key is not None and self.tls_ca is None and not is_loopback(self.target)


def config_file_path(env: Mapping[str, str]) -> Path | None:
    """$MITOSIS_CONFIG, else $XDG_CONFIG_HOME/mitosis/config.toml, else under $HOME/.config.

    Only `env` is consulted, so a caller passing its own environment gets no file from the
    real home folder; None when neither XDG_CONFIG_HOME nor HOME is set.
    """
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]).expanduser()
    if env.get("XDG_CONFIG_HOME"):
        return Path(env["XDG_CONFIG_HOME"]) / "mitosis" / "config.toml"
    if env.get("HOME"):
        return Path(env["HOME"]) / ".config" / "mitosis" / "config.toml"
    return None


def read_config(path: Path | None, *, required: bool = False) -> dict[str, str]:
    """Read a config file's settings; {} when there is none (an error when `required`).

    Refuses a file others may change, one that holds a key others may read, one that is not
    TOML, and settings it does not know or that are not non-empty strings.
    """
    if path is None:
        return {}
    try:
        with path.open("rb") as file:
            info = os.fstat(file.fileno())
            data = file.read()
    except FileNotFoundError:
        if required:
            raise ConfigurationError(f"${CONFIG_ENV} names {path}, which does not exist") from None
        return {}
    except OSError as error:
        raise ConfigurationError(f"cannot read the config file {path}: {error.strerror}") from None
    try:
        parsed = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        # Neither message quotes the file's text, so a key in it is not repeated here.
        raise ConfigurationError(f"{path} is not a TOML file: {error}") from None
    unknown = sorted(set(parsed) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigurationError(
            f"{path}: unknown setting {', '.join(unknown)} (known: {', '.join(CONFIG_KEYS)})"
        )
    for name, value in parsed.items():
        if not isinstance(value, str) or not value.strip():
            raise ConfigurationError(f"{path}: {name} must be a non-empty string")
    _check_permissions(path, info, holds_key="api_key" in parsed)
    return {name: str(value).strip() for name, value in parsed.items()}


def _check_permissions(path: Path, info: os.stat_result, *, holds_key: bool) -> None:
    if os.name != "posix":
        return
    mode = stat.S_IMODE(info.st_mode)
    fix = f"run: chmod 600 {path}"
    if info.st_uid not in (os.getuid(), 0):
        raise ConfigurationError(f"{path} belongs to another user (uid {info.st_uid}); not used")
    if mode & 0o022:
        raise ConfigurationError(
            f"{path} may be changed by other users (mode {mode:04o}); not used: {fix}"
        )
    if holds_key and mode & 0o044:
        raise ConfigurationError(
            f"{path} holds an API key but other users may read it (mode {mode:04o});"
            f" not used: {fix}"
        )


def checked_api_key(key: str, source: str) -> str:
    """The key without surrounding whitespace; refuses one a header cannot carry.

    The message names the source, never the key.
    """
    key = key.strip()
    if not key:
        raise ConfigurationError(f"the API key from {source} is empty")
    if not all("!" <= c <= "~" for c in key):
        raise ConfigurationError(
            f"the API key from {source} holds characters a header cannot carry"
            " (printable ASCII without spaces only)"
        )
    return key


def is_loopback(target: str) -> bool:
    """True when a gRPC target ("host:port", "[v6]:port", "unix:PATH") names this machine."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    for scheme in ("dns:///", "ipv4:", "ipv6:"):
        target = target.removeprefix(scheme)
    host, sep, _ = target.rpartition(":")
    host = (host if sep else target).strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
