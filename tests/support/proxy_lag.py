"""Measure a plain gRPC-Web WatchTask's lag through the proxy matrix's rows (no assertions).

    .venv/bin/python -m tests.support.proxy_lag [--pace 0.02] [ROW ...]

Starts a planner, an executor (offline model, paced) and Envoy from the working tree's
template, then for each row (all by default, plus `direct` and `nginx-chain-without-fix`)
runs one task and prints the lag of its events (arrival minus `create_time`): the figures of
docs/DEPLOYING.md's table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from mitosis.gateway import DEFAULT_STATIC_DIR
from mitosis.v1 import task_pb2, task_service_pb2

from ..gateway import start_gateway
from .grpc_web import fetch, grpc_web_call, is_heartbeat, open_grpc_web_watch
from .processes import start_service
from .proxies import NGINX_CHAIN, SETUPS, ProxySetup, start_proxy

EXTRA_ROWS = {
    "nginx-chain-without-fix": ProxySetup(
        "nginx-chain-without-fix",
        "nginx",
        NGINX_CHAIN.replace("proxy_pass_header X-Accel-Buffering;", ""),
    )
}
TASK_TEXT = "Write a short market brief on home solar batteries"


def lag_of_one_task(port: int) -> dict[str, object]:
    """One task watched through `port`: its event count, duration and lag figures."""
    status, _, _ = fetch(port, "GET", "/")
    if status != 200:
        return {"http_status": status}
    request = task_service_pb2.CreateTaskRequest(text=TASK_TEXT)
    _, _, messages, _ = grpc_web_call(port, "CreateTask", request)
    task_id = task_pb2.Task.FromString(messages[0]).task_id
    stream = open_grpc_web_watch(port, task_service_pb2.WatchTaskRequest(task_id=task_id))
    arrivals = [a for a in stream.rest(timeout_s=120) if not is_heartbeat(a.event)]
    lags = sorted(1000 * a.lag_s for a in arrivals)
    created = [a.event.create_time.ToNanoseconds() / 1e9 for a in arrivals]
    return {
        "events": len(lags),
        "task_s": round(created[-1] - created[0], 2),
        "p50_ms": round(statistics.median(lags), 1),
        "max_ms": round(lags[-1], 1),
        "grpc_status": stream.end.grpc_status if stream.end else None,
    }


def main() -> None:
    rows = {**SETUPS, **EXTRA_ROWS}
    browser_rows = [name for name, setup in rows.items() if not setup.native_grpc]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pace", default="0.02", help="the offline model's --offline-pace")
    parser.add_argument("rows", nargs="*", default=["direct", *browser_rows])
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="proxy-lag-"))
    planner = start_service("mitosis-planner", folder / "planner.log")
    executor = start_service(
        "mitosis-executor",
        folder / "executor.log",
        f"--planner={planner.target}",
        f"--data-dir={folder / 'data'}",
        f"--offline-pace={args.pace}",
        "--heartbeat-interval=0.5",
    )
    figures: dict[str, object] = {}
    try:
        with start_gateway(folder, executor.port, DEFAULT_STATIC_DIR) as gateway:
            for name in args.rows:
                if name == "direct":
                    figures[name] = lag_of_one_task(gateway.port)
                else:
                    with start_proxy(rows[name], gateway.port, folder / name) as proxy:
                        figures[name] = lag_of_one_task(proxy.port)
                print(name, figures[name], flush=True)
    finally:
        executor.stop()
        planner.stop()
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
