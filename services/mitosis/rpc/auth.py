"""API keys: who may call. Keys are stored as hashes and checked once per call, in an interceptor.

A keys file holds one key per line, `NAME sha256:HEX`, where HEX is the SHA-256 of the key.
Keys are 256 random bits, so a plain SHA-256 is as hard to reverse as the key is to guess; a
slow password hash would add nothing but latency to every call.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from mitosis.errors import API_KEY_MISSING, API_KEY_UNKNOWN, error_status
from mitosis.rpc.interceptors import (
    Behaviour,
    Continuation,
    ServerInterceptor,
    prepared,
    service_of,
    wrap_handler,
)
from mitosis.rpc.serving import HEALTH_SERVICE, Ending, StreamEnd, ending_when
from mitosis.rpc.settings import add_setting

if TYPE_CHECKING:
    from mitosis.rpc.interceptors import Handler

logger = logging.getLogger(__name__)

KEY_PREFIX = "mk_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_HASH = re.compile(r"sha256:([0-9a-f]{64})")
_BEARER = "bearer "
_REFLECTION_SERVICES = frozenset(
    {"grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}
)
OPEN_SERVICES = frozenset({HEALTH_SERVICE, *_REFLECTION_SERVICES})
"""Services anyone may call: balancers probe health, tools read the schema."""

MISSING_KEY = "this service needs an API key (metadata authorization: Bearer <key>)"
UNKNOWN_KEY = "unknown API key"
REVOKED_KEY = "the API key was revoked"
API_KEY_REVOKED = "API_KEY_REVOKED"
"""The ErrorInfo reason of a stream whose key was taken out of the keys file while it was
open. Part of the contract, as the reasons in mitosis.errors are."""

KEYS_POLL_INTERVAL = 2.0
"""Seconds between looks at the keys file: a revoked key stops working within this."""


def default_keys_file(env: Mapping[str, str] = os.environ) -> Path:
    """Where mitosis-keygen keeps keys unless told: the user's config folder, never a
    checkout (where git would offer to commit it)."""
    config = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "mitosis" / "keys.txt"


class KeyRefused(PermissionError):
    """A call's key is missing or unknown; `reason` says which, as its ErrorInfo does."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


_caller: ContextVar[str] = ContextVar("mitosis_caller", default="")
_admin: ContextVar[bool] = ContextVar("mitosis_caller_is_admin", default=False)

ADMIN = "admin"
"""The flag after a key's hash that makes it an admin key: it also sees tasks made without
keys (whose owner is empty)."""


def current_caller() -> str:
    """Return the name of the key that made the call being served ('' when keys are off)."""
    return _caller.get()


def caller_is_admin() -> bool:
    """Whether the call being served came with an admin key."""
    return _admin.get()


def may_see(task_owner: str, caller: str) -> bool:
    """Whether the caller may see a task: its own, or, with an admin key, one made without
    keys (which belongs to no key)."""
    return task_owner == caller or (task_owner == "" and caller_is_admin())


def new_key() -> str:
    """Return a new random key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """Return how a keys file stores the key."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def key_line(name: str, key: str, admin: bool = False) -> str:
    """Return the keys-file line for the key."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"a key name is 1-64 letters, digits or _.@- (not {name!r})")
    return f"{name} {hash_key(key)}" + (f" {ADMIN}" if admin else "")


class KeysFileError(ValueError):
    """The keys file cannot be used; the message names the file and the line."""


class KeyRing:
    """The keys a service accepts, by hash, and the name each one stands for."""

    def __init__(self, names_by_hash: dict[str, str], admins: frozenset[str] = frozenset()) -> None:
        self._names = names_by_hash
        self.admins = admins
        """The names of the admin keys."""

    @classmethod
    def parse(cls, text: str, where: str = "keys file") -> KeyRing:
        """Read `NAME sha256:HEX [admin]` lines; blank lines and `#` comments are skipped."""
        names: dict[str, str] = {}
        admins: set[str] = set()
        seen: set[str] = set()
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            flags = parts[2:]
            if (
                len(parts) < 2
                or flags not in ([], [ADMIN])
                or not _NAME.fullmatch(parts[0])
                or not _HASH.fullmatch(parts[1])
            ):
                raise KeysFileError(
                    f"{where}:{number}: expected `NAME sha256:<64 hex digits>`, then `{ADMIN}`"
                    " for an admin key"
                )
            name, digest = parts[:2]
            if flags:
                admins.add(name)
            if name in seen:
                raise KeysFileError(f"{where}:{number}: the name {name!r} is given twice")
            if digest in names:
                raise KeysFileError(f"{where}:{number}: the same key is given twice")
            seen.add(name)
            names[digest] = name
        if not names:
            raise KeysFileError(f"{where}: no keys in it; without keys, leave --api-keys out")
        return cls(names, frozenset(admins))

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        """Read a keys file."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise KeysFileError(f"cannot read the keys file {path}: {error.strerror}") from error
        except UnicodeDecodeError as error:
            raise KeysFileError(f"the keys file {path} is not UTF-8 text") from error
        return cls.parse(text, str(path))

    @property
    def names(self) -> frozenset[str]:
        """The names of the keys."""
        return frozenset(self._names.values())

    def holds(self, digest: str) -> bool:
        """Whether the key with this hash is still one of ours."""
        return digest in self._names

    def name_for(self, key: str) -> str | None:
        """Return the name of the key, or None when it is not one of ours."""
        digest = hash_key(key)
        for known, name in self._names.items():
            # Every entry compared in constant time: how many there are is all a clock tells.
            if hmac.compare_digest(known, digest):
                return name
        return None

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
        """Return the caller's key name from call metadata, or raise KeyRefused."""
        return self.identify(metadata)[0]

    def identify(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> tuple[str, str]:
        """Return the caller's key name and its hash from call metadata, or raise KeyRefused."""
        for header, value in metadata or ():
            if header == "authorization" and isinstance(value, str):
                if value[: len(_BEARER)].lower() != _BEARER:
                    raise KeyRefused(MISSING_KEY, API_KEY_MISSING)
                key = value[len(_BEARER) :].strip()
                name = self.name_for(key)
                if name is None:
                    raise KeyRefused(UNKNOWN_KEY, API_KEY_UNKNOWN)
                return name, hash_key(key)
        raise KeyRefused(MISSING_KEY, API_KEY_MISSING)


_Stamp = tuple[int, int, int, int] | None
"""What tells a changed file: device, inode, size, modification time (None: unreadable)."""


def _stamp(path: Path) -> _Stamp:
    try:
        found = path.stat()
    except OSError:
        return None
    return (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)


class LiveKeys:
    """The keys of a keys file, read again whenever the file changes (or on `reload`).

    A file that cannot be used is refused with one ERROR line and the keys read before
    stay. Each reload wakes the streams opened with a key, which end when theirs is gone.
    """

    def __init__(self, path: Path, poll_interval: float = KEYS_POLL_INTERVAL) -> None:
        self.path = path
        self._poll_interval = poll_interval
        self._seen = _stamp(path)
        self.ring = KeyRing.load(path)
        self._changed = asyncio.Event()

    def reload(self) -> bool:
        """Read the file again; False (and one ERROR line) when it is refused."""
        self._seen = _stamp(self.path)
        try:
            ring = KeyRing.load(self.path)
        except KeysFileError as error:
            logger.error("keys file refused, the keys read before stay in use: %s", error)
            return False
        before, after = self.ring.names, ring.names
        self.ring = ring
        logger.info(
            "keys file %s read again: %s (added %s; removed %s)",
            self.path,
            _count(len(after), "key"),
            ", ".join(sorted(after - before)) or "none",
            ", ".join(sorted(before - after)) or "none",
        )
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return True

    async def follow(self) -> None:
        """Reload whenever the file's stamp changes, until cancelled."""
        while True:
            await asyncio.sleep(self._poll_interval)
            if _stamp(self.path) != self._seen:
                self.reload()

    async def revoked(self, digest: str) -> None:
        """Return once a reload has taken out the key with this hash."""
        while self.ring.holds(digest):
            await self._changed.wait()


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


class ApiKeyInterceptor(ServerInterceptor):
    """Refuses calls without a known key (UNAUTHENTICATED); names the caller for the rest."""

    def __init__(
        self, keys: KeyRing | LiveKeys, open_services: frozenset[str] = OPEN_SERVICES
    ) -> None:
        self._keys = keys
        self._open = open_services

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(details)
        if handler is None or service_of(details.method) in self._open:
            return handler
        keys = self._keys
        ring = keys.ring if isinstance(keys, LiveKeys) else keys
        try:
            caller, digest = ring.identify(details.invocation_metadata)
        except KeyRefused as refusal:
            return wrap_handler(handler, _refusing(refusal, handler.response_streaming))

        admin = caller in ring.admins

        def as_caller(_context: Any) -> None:
            _caller.set(caller)
            _admin.set(admin)

        if isinstance(keys, LiveKeys) and handler.response_streaming:
            # A stream outlives the check at its start: it ends when its key is revoked.
            async def revoked(_request: Any) -> Ending:
                await keys.revoked(digest)
                code = grpc.StatusCode.UNAUTHENTICATED
                return lambda _last: StreamEnd(code, REVOKED_KEY, API_KEY_REVOKED)

            handler = wrap_handler(handler, lambda behaviour: ending_when(behaviour, revoked))
        return prepared(handler, as_caller)


def _refusing(refusal: KeyRefused, streaming: bool) -> Callable[[Behaviour], Behaviour]:
    """Return a wrapper whose behaviour only refuses the call."""
    code, message = grpc.StatusCode.UNAUTHENTICATED, str(refusal)
    trailer = error_status(code, message, refusal.reason, {})

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, message, trailing_metadata=trailer)

    async def refuse_streaming(request: Any, context: Any) -> AsyncIterator[Any]:
        await refuse(request, context)
        yield  # pragma: no cover  # makes this an async generator; abort raises first

    return lambda _behaviour: refuse_streaming if streaming else refuse


def keygen_main(argv: Sequence[str] | None = None) -> None:
    """`mitosis-keygen NAME`: print a new key once and keep its hash in the keys file;
    `--list` names the keys, `--revoke NAME` takes one out. Running services notice the
    changed file by themselves (or on SIGHUP)."""
    keys_file = default_keys_file()
    parser = argparse.ArgumentParser(
        prog="mitosis-keygen",
        description="Make, list and revoke API keys. A new key is printed once, on stdout;"
        " services keep only its hash, as a `NAME sha256:HEX` line in the file that"
        " --api-keys names, and read that file again when it changes.",
    )
    parser.add_argument(
        "name", nargs="?", help="who the new key is for; tasks it creates belong to this name"
    )
    parser.add_argument(
        "--keys-file",
        type=Path,
        default=keys_file,
        help="the keys file (created with mode 600; default %(default)s); - prints the new"
        " key's line on stderr instead",
    )
    parser.add_argument(
        "--admin",
        action="store_true",
        help="make an admin key: it also sees tasks made while the service ran without keys",
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--list", action="store_true", help="print the names of the keys")
    what.add_argument("--revoke", metavar="NAME", help="take the key named NAME out")
    args = parser.parse_args(argv)
    path: Path = args.keys_file
    if args.list or args.revoke:
        if args.name is not None:
            parser.error("give a NAME to make a key, or --list, or --revoke NAME")
        if str(path) == "-":
            parser.error("--list and --revoke need a keys file")
        _list_or_revoke(parser, path, args.revoke)
        return
    if args.name is None:
        parser.error("give the NAME of the new key (or --list, or --revoke NAME)")
    key = new_key()
    try:
        line = key_line(args.name, key, admin=args.admin)
    except ValueError as error:
        parser.error(str(error))
    if str(path) == "-":
        print(line, file=sys.stderr)
    else:
        lines = _lines(path)
        if args.name in _named(lines):
            parser.error(f"{path} already has a key named {args.name!r}")
        _replace(path, [*lines, line])
        print(f"added {args.name!r} to {path}", file=sys.stderr)
    print(key)


def _list_or_revoke(parser: argparse.ArgumentParser, path: Path, revoke: str | None) -> None:
    lines = _lines(path)
    named = _named(lines)
    if revoke is None:
        for line in lines:
            if name := _name_of(line):
                print(f"{name} ({ADMIN})" if ADMIN in line.split("#", 1)[0].split()[2:] else name)
        return
    if revoke not in named:
        parser.error(f"{path} has no key named {revoke!r}")
    kept = [line for line in lines if _name_of(line) != revoke]
    _replace(path, kept)
    print(f"revoked {revoke!r} in {path}; services reading it stop taking the key", file=sys.stderr)


def _lines(path: Path) -> list[str]:
    """The keys file's lines ([] when it does not exist yet); SystemExit when unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as error:
        raise SystemExit(f"mitosis-keygen: cannot read {path}: {error.strerror}") from None
    if any(_name_of(line) for line in text.splitlines()):
        try:
            KeyRing.parse(text, str(path))
        except KeysFileError as error:
            raise SystemExit(f"mitosis-keygen: {error}") from None
    return text.splitlines()


def _name_of(line: str) -> str:
    """The key name a keys-file line holds ('' for blank and comment lines)."""
    fields = line.split("#", 1)[0].split()
    return fields[0] if fields else ""


def _named(lines: list[str]) -> list[str]:
    return [name for line in lines if (name := _name_of(line))]


def _replace(path: Path, lines: list[str]) -> None:
    """Write the keys file whole, mode 600, by renaming a new file over it: a service never
    reads half of it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        out.write("".join(line + "\n" for line in lines))
    os.replace(temporary, path)


def add_key_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """Add --api-keys and --allow-no-keys (env MITOSIS_API_KEYS, MITOSIS_ALLOW_NO_KEYS)."""
    add_setting(
        parser,
        "--api-keys",
        "MITOSIS_API_KEYS",
        env,
        type=Path,
        help="file of the API keys callers must send (`NAME sha256:HEX` lines, made by"
        " mitosis-keygen, which keeps them in ~/.config/mitosis/keys.txt); read again when it"
        " changes or on SIGHUP; without it every caller is let in",
    )
    add_setting(
        parser,
        "--keys-poll-interval",
        "MITOSIS_KEYS_POLL_INTERVAL",
        env,
        type=float,
        default=str(KEYS_POLL_INTERVAL),
        help="seconds between looks at the keys file for changes (SIGHUP reads it at once):"
        " how soon an added key works and a revoked one, with its open streams, stops",
    )
    add_setting(
        parser,
        "--allow-no-keys",
        "MITOSIS_ALLOW_NO_KEYS",
        env,
        action="store_true",
        help="serve a non-loopback address without --api-keys (anyone who can reach it may"
        " call it); without it that is refused",
    )


def load_keys(args: argparse.Namespace, listen: str, service: str) -> LiveKeys | None:
    """Return the keys from --api-keys, or None when the service runs without keys.

    Raises KeysFileError for an unusable file, and for a non-loopback address without keys
    unless --allow-no-keys was given.
    """
    if args.api_keys is not None:
        keys = LiveKeys(args.api_keys, args.keys_poll_interval)
        logger.info(
            "%s: %s from %s", service, _count(len(keys.ring.names), "API key"), args.api_keys
        )
        return keys
    if not is_loopback(listen) and not args.allow_no_keys:
        raise KeysFileError(
            f"{service}: refusing to serve {listen} without API keys: give --api-keys FILE"
            " (see mitosis-keygen), listen on 127.0.0.1, or pass --allow-no-keys"
        )
    logger.warning("%s runs WITHOUT API keys: anyone who can reach %s may call it", service, listen)
    return None


def is_loopback(address: str) -> bool:
    """Whether a listen address (host:port) is reachable only from this machine."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def describe_keys(keys: LiveKeys | None) -> str:
    """How a service's start line says whether it wants keys."""
    return _count(len(keys.ring.names), "API key") if keys else "no API keys"
