"""Real proxies in front of Envoy, configured the way people write them: `start_proxy`.

Each `ProxySetup` is one row of the proxy matrix (docs/DEPLOYING.md, "Proxies in front of
Envoy"): a program (Debian's nginx, caddy and haproxy; mitmproxy from its own locked
environment) and the configuration a user would write, rendered here with a port on
127.0.0.1, Envoy's port and a read timeout. Every configuration's timeouts are shortened to
`READ_TIMEOUT_S` so that a test sees heartbeats keep an idle stream open past them.
`start_proxy` runs the program in a folder of its own and returns once it accepts
connections; its log is `proxy.log` there.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import string
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from .ports import free_port
from .waiting import eventually_sync

ROOT = Path(__file__).resolve().parents[2]
MITMDUMP = ROOT / "tests" / "proxies" / "mitmproxy" / ".venv" / "bin" / "mitmdump"
READ_TIMEOUT_S = 2
"""The proxies' read (idle) timeout in the tests; executors send heartbeats more often."""

# --- nginx ---------------------------------------------------------------------------------

# What every nginx configuration here shares: the foreground, one process (no user switch),
# every file in the proxy's own folder.
_NGINX_MAIN = """\
daemon off;
master_process off;
worker_processes 1;
pid ${workdir}/nginx.pid;
error_log ${workdir}/proxy.log info;
events { worker_connections 1024; }
http {
    access_log ${workdir}/access.log;
    client_body_temp_path ${workdir}/client_body;
    proxy_temp_path ${workdir}/proxy_temp;
    fastcgi_temp_path ${workdir}/fastcgi_temp;
    uwsgi_temp_path ${workdir}/uwsgi_temp;
    scgi_temp_path ${workdir}/scgi_temp;
${servers}
}
"""

NGINX_PROXY_PASS_ONLY = """\
    server {
        listen 127.0.0.1:${port};
        location / {
            proxy_pass http://127.0.0.1:${upstream};
            proxy_read_timeout ${read_timeout}s;
        }
    }
"""
"""Only `proxy_pass`: nginx speaks HTTP/1.0 to Envoy and buffers responses."""

NGINX_HTTP11_BUFFERED = """\
    server {
        listen 127.0.0.1:${port};
        location / {
            proxy_pass http://127.0.0.1:${upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $$host;
            proxy_set_header X-Real-IP $$remote_addr;
            proxy_set_header X-Forwarded-For $$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $$scheme;
            proxy_read_timeout ${read_timeout}s;
        }
    }
"""
"""The configuration people copy: HTTP/1.1 to Envoy, buffering left on."""

NGINX_INGRESS_LIKE = """\
    server {
        listen 127.0.0.1:${port};
        location / {
            proxy_pass http://127.0.0.1:${upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $$host;
            proxy_set_header X-Forwarded-For $$remote_addr;
            proxy_buffering off;
            proxy_request_buffering on;
            proxy_buffer_size 4k;
            proxy_connect_timeout 5s;
            proxy_send_timeout ${read_timeout}s;
            proxy_read_timeout ${read_timeout}s;
        }
    }
"""
"""As ingress-nginx configures each location by default (HTTP/1.1, proxy-buffering off;
its 60 s read and send timeouts are shortened here)."""

NGINX_CHAIN = """\
    server {
        listen 127.0.0.1:${port};
        location / {
            proxy_pass http://127.0.0.1:${inner_port};
            proxy_read_timeout ${read_timeout}s;
        }
    }
    server {
        listen 127.0.0.1:${inner_port};
        location / {
            proxy_pass http://127.0.0.1:${upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $$host;
            proxy_buffering off;
            proxy_read_timeout ${read_timeout}s;
            # The inner nginx consumes Envoy's X-Accel-Buffering; passed on, the outer one
            # streams too.
            proxy_pass_header X-Accel-Buffering;
        }
    }
"""
"""Two nginx in a row: a naive outer one (only `proxy_pass`) before an ingress-like inner
one that passes `X-Accel-Buffering` on."""

NGINX_GRPC_PASS = """\
    server {
        listen 127.0.0.1:${port} http2;
        location / {
            grpc_pass grpc://127.0.0.1:${upstream};
            grpc_read_timeout ${read_timeout}s;
        }
    }
"""
"""Native gRPC: an HTTP/2 (h2c) listener and `grpc_pass`."""

# --- Caddy ---------------------------------------------------------------------------------

# No admin endpoint (its default port 2019 is shared by every Caddy on the machine) and no
# automatic HTTPS: plain HTTP on a loopback port.
CADDY_DEFAULTS = """\
{
    admin off
    auto_https off
}
http://127.0.0.1:${port} {
    bind 127.0.0.1
    reverse_proxy 127.0.0.1:${upstream} {
        transport http {
            read_timeout ${read_timeout}s
        }
    }
}
"""
"""`reverse_proxy` with its defaults (the read timeout aside)."""

CADDY_H2C = """\
{
    admin off
    auto_https off
    servers {
        protocols h1 h2c
    }
}
http://127.0.0.1:${port} {
    bind 127.0.0.1
    reverse_proxy h2c://127.0.0.1:${upstream} {
        transport http {
            read_timeout ${read_timeout}s
        }
    }
}
"""
"""Native gRPC: h2c from the client and to Envoy."""

# --- HAProxy -------------------------------------------------------------------------------

_HAPROXY = """\
global
    log stderr format raw local0 info

defaults
    mode http
    log global
    option httplog
    timeout connect 5s
    timeout client ${read_timeout}s
    timeout server ${read_timeout}s
${options}
frontend public
    bind 127.0.0.1:${port}${bind_options}
    default_backend envoy

backend envoy
    server envoy 127.0.0.1:${upstream}${server_options}
"""
HAPROXY_DEFAULTS = string.Template(_HAPROXY).safe_substitute(
    options="", bind_options="", server_options=""
)
"""HAProxy 2.6 in HTTP mode with nothing but the timeouts it asks for."""
HAPROXY_NO_DELAY = string.Template(_HAPROXY).safe_substitute(
    options="    option http-no-delay\n", bind_options="", server_options=""
)
"""The same with `option http-no-delay`: no waiting to merge a streamed response's pieces."""
HAPROXY_H2 = string.Template(_HAPROXY).safe_substitute(
    options="", bind_options=" proto h2", server_options=" proto h2"
)
"""Native gRPC: HTTP/2 on both sides."""


@dataclass(frozen=True)
class ProxySetup:
    """One row of the matrix: a program and the configuration it runs."""

    name: str
    program: str
    """nginx, caddy, haproxy or mitmdump."""
    config: str = ""
    """A template: ${port}, ${upstream} (Envoy's port), ${read_timeout} (s), ${inner_port}."""
    native_grpc: bool = False
    """Carries HTTP/2 (h2c): for native gRPC clients rather than browsers."""
    buffers_whole_responses: bool = False

    def render(self, port: int, upstream: int, inner_port: int, workdir: Path) -> str:
        """The configuration file's text."""
        values = {
            "port": port,
            "upstream": upstream,
            "inner_port": inner_port,
            "read_timeout": READ_TIMEOUT_S,
            "workdir": workdir,
        }
        text = string.Template(self.config).substitute(values)
        if self.program == "nginx":
            return string.Template(_NGINX_MAIN).substitute(values, servers=text)
        return text


SETUPS = {
    setup.name: setup
    for setup in (
        ProxySetup("nginx-proxy-pass-only", "nginx", NGINX_PROXY_PASS_ONLY),
        ProxySetup("nginx-http11-buffered", "nginx", NGINX_HTTP11_BUFFERED),
        ProxySetup("nginx-ingress-like", "nginx", NGINX_INGRESS_LIKE),
        ProxySetup("nginx-chain", "nginx", NGINX_CHAIN),
        ProxySetup("caddy", "caddy", CADDY_DEFAULTS),
        ProxySetup("haproxy", "haproxy", HAPROXY_DEFAULTS),
        ProxySetup("haproxy-http-no-delay", "haproxy", HAPROXY_NO_DELAY),
        ProxySetup("mitmproxy", "mitmdump", buffers_whole_responses=True),
        ProxySetup("nginx-grpc-pass", "nginx", NGINX_GRPC_PASS, native_grpc=True),
        ProxySetup("caddy-h2c", "caddy", CADDY_H2C, native_grpc=True),
        ProxySetup("haproxy-h2", "haproxy", HAPROXY_H2, native_grpc=True),
    )
}
"""Every row of the matrix, by name."""


def program_path(program: str) -> str | None:
    """Where the proxy program is installed, or None."""
    if program == "mitmdump":
        return str(MITMDUMP) if MITMDUMP.exists() else None
    return shutil.which(program)


class Proxy:
    """A proxy running as a child process on 127.0.0.1."""

    def __init__(
        self, setup: ProxySetup, process: subprocess.Popen[bytes], port: int, workdir: Path
    ):
        self.setup = setup
        self.process = process
        self.port = port
        self.workdir = workdir

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def target(self) -> str:
        """The address for a gRPC channel."""
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "proxy.log"

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-limit:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds. Safe to call twice."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _command(setup: ProxySetup, binary: str, config: Path, port: int, upstream: int) -> list[str]:
    if setup.program == "nginx":
        return [binary, "-p", str(config.parent), "-c", str(config), "-e", "stderr"]
    if setup.program == "caddy":
        return [binary, "run", "--config", str(config), "--adapter", "caddyfile"]
    if setup.program == "haproxy":
        return [binary, "-db", "-f", str(config)]
    # mitmproxy's reverse mode with its defaults; its CA and state stay in the folder.
    return [
        binary,
        "--mode",
        f"reverse:http://127.0.0.1:{upstream}",
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        str(port),
        "--set",
        f"confdir={config.parent / 'mitmproxy'}",
        "--quiet",
    ]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def start_proxy(setup: ProxySetup, upstream: int, workdir: Path, within: float = 30.0) -> Proxy:
    """Start the proxy in front of Envoy's port `upstream`; return once it accepts."""
    binary = program_path(setup.program)
    if binary is None:
        raise RuntimeError(f"{setup.program} is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / {"nginx": "nginx.conf", "caddy": "Caddyfile"}.get(setup.program, "proxy.cfg")
    config.write_text(setup.render(port, upstream, free_port(), workdir))
    # Caddy keeps its state under $HOME and the XDG folders: here, not in the user's.
    env = {
        **os.environ,
        "HOME": str(workdir),
        "XDG_DATA_HOME": str(workdir),
        "XDG_CONFIG_HOME": str(workdir),
    }
    with (workdir / "proxy.log").open("ab") as log:
        process = subprocess.Popen(
            _command(setup, binary, config, port, upstream),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
        )
    proxy = Proxy(setup, process, port, workdir)

    def listening() -> bool:
        if process.poll() is not None:
            raise RuntimeError(
                f"{setup.name} exited with {process.returncode}:\n{proxy.log_tail()}"
            )
        return _accepts(port)

    try:
        eventually_sync(listening, timeout=within, what=f"{setup.name} listens")
    except TimeoutError:
        proxy.stop()
        raise RuntimeError(
            f"{setup.name} did not listen within {within} s:\n{proxy.log_tail()}"
        ) from None
    return proxy
