"""API keys: who may call. Keys are stored as hashes and checked once per call, in an interceptor.

A keys file holds one key per line, `NAME sha256:HEX`, where HEX is the SHA-256 of the key.
Keys are 256 random bits, so a plain SHA-256 is as hard to reverse as the key is to guess; a
slow password hash would add nothing but latency to every call.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import ipaddress
import logging
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
from mitosis.rpc.serving import HEALTH_SERVICE

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


class KeyRefused(PermissionError):
    """A call's key is missing or unknown; `reason` says which, as its ErrorInfo does."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


_caller: ContextVar[str] = ContextVar("mitosis_caller", default="")


def current_caller() -> str:
    """Return the name of the key that made the call being served ('' when keys are off)."""
    return _caller.get()


def new_key() -> str:
    """Return a new random key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """Return how a keys file stores the key."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def key_line(name: str, key: str) -> str:
    """Return the keys-file line for the key."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"a key name is 1-64 letters, digits or _.@- (not {name!r})")
    return f"{name} {hash_key(key)}"


class KeysFileError(ValueError):
    """The keys file cannot be used; the message names the file and the line."""


class KeyRing:
    """The keys a service accepts, by hash, and the name each one stands for."""

    def __init__(self, names_by_hash: dict[str, str]) -> None:
        self._names = names_by_hash

    @classmethod
    def parse(cls, text: str, where: str = "keys file") -> KeyRing:
        """Read `NAME sha256:HEX` lines; blank lines and `#` comments are skipped."""
        names: dict[str, str] = {}
        seen: set[str] = set()
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2 or not _NAME.fullmatch(parts[0]) or not _HASH.fullmatch(parts[1]):
                raise KeysFileError(f"{where}:{number}: expected `NAME sha256:<64 hex digits>`")
            name, digest = parts
            if name in seen:
                raise KeysFileError(f"{where}:{number}: the name {name!r} is given twice")
            if digest in names:
                raise KeysFileError(f"{where}:{number}: the same key is given twice")
            seen.add(name)
            names[digest] = name
        if not names:
            raise KeysFileError(f"{where}: no keys in it; without keys, leave --api-keys out")
        return cls(names)

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        """Read a keys file."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise KeysFileError(f"cannot read the keys file {path}: {error.strerror}") from error
        return cls.parse(text, str(path))

    @property
    def names(self) -> frozenset[str]:
        """The names of the keys."""
        return frozenset(self._names.values())

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
        for header, value in metadata or ():
            if header == "authorization" and isinstance(value, str):
                if value[: len(_BEARER)].lower() != _BEARER:
                    raise KeyRefused(MISSING_KEY, API_KEY_MISSING)
                name = self.name_for(value[len(_BEARER) :].strip())
                if name is None:
                    raise KeyRefused(UNKNOWN_KEY, API_KEY_UNKNOWN)
                return name
        raise KeyRefused(MISSING_KEY, API_KEY_MISSING)


class ApiKeyInterceptor(ServerInterceptor):
    """Refuses calls without a known key (UNAUTHENTICATED); names the caller for the rest."""

    def __init__(self, keys: KeyRing, open_services: frozenset[str] = OPEN_SERVICES) -> None:
        self._keys = keys
        self._open = open_services

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(details)
        if handler is None or service_of(details.method) in self._open:
            return handler
        try:
            caller = self._keys.authenticate(details.invocation_metadata)
        except KeyRefused as refusal:
            return wrap_handler(handler, _refusing(refusal, handler.response_streaming))

        def as_caller(_context: Any) -> None:
            _caller.set(caller)

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
    """`mitosis-keygen NAME`: print a new key once, and the line a keys file holds for it."""
    parser = argparse.ArgumentParser(
        prog="mitosis-keygen",
        description="Make a new API key. The key is printed once, on stdout; services keep only"
        " its hash, as a `NAME sha256:HEX` line in the file that --api-keys names.",
    )
    parser.add_argument("name", help="who the key is for; tasks it creates belong to this name")
    parser.add_argument(
        "--keys-file",
        type=Path,
        help="append the hash line to this file (created with mode 600); without it the line"
        " is printed on stderr",
    )
    args = parser.parse_args(argv)
    key = new_key()
    try:
        line = key_line(args.name, key)
    except ValueError as error:
        parser.error(str(error))
    if args.keys_file is None:
        print(line, file=sys.stderr)
    else:
        existing = KeyRing.load(args.keys_file) if _has_keys(args.keys_file) else None
        if existing is not None and args.name in existing.names:
            parser.error(f"{args.keys_file} already has a key named {args.name!r}")
        args.keys_file.touch(mode=0o600, exist_ok=True)
        with args.keys_file.open("a", encoding="utf-8") as keys_file:
            keys_file.write(line + "\n")
        print(f"added {args.name!r} to {args.keys_file}", file=sys.stderr)
    print(key)


def _has_keys(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return False
    return any(line.split("#", 1)[0].strip() for line in text.splitlines())


def add_key_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """Add --api-keys and --allow-no-keys, with MITOSIS_API_KEYS as the keys file's default."""
    parser.add_argument(
        "--api-keys",
        type=Path,
        default=Path(env["MITOSIS_API_KEYS"]) if env.get("MITOSIS_API_KEYS") else None,
        help="file of the API keys callers must send (`NAME sha256:HEX` lines, made by"
        " mitosis-keygen; env MITOSIS_API_KEYS); without it every caller is let in",
    )
    parser.add_argument(
        "--allow-no-keys",
        action="store_true",
        default=env.get("MITOSIS_ALLOW_NO_KEYS", "") not in ("", "0"),
        help="serve a non-loopback address without --api-keys (anyone who can reach it may"
        " call it; env MITOSIS_ALLOW_NO_KEYS=1); without it that is refused",
    )


def load_keys(args: argparse.Namespace, listen: str, service: str) -> KeyRing | None:
    """Return the keys from --api-keys, or None when the service runs without keys.

    Raises KeysFileError for an unusable file, and for a non-loopback address without keys
    unless --allow-no-keys was given.
    """
    if args.api_keys is not None:
        keys = KeyRing.load(args.api_keys)
        logger.info("%s: %d API keys from %s", service, len(keys.names), args.api_keys)
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
