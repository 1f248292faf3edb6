"""`python -m bench`: run the workloads, print a Markdown table, write JSON and Markdown.

    python -m bench                 # the full run (about 6-8 minutes on 2 cores)
    python -m bench --quick         # every workload once, small (about a minute)
    python -m bench --only latency,throughput --reps 5
    python -m bench --profile bench/results/profiles   # py-spy every executor it starts

Progress goes to stderr, the tables to stdout; `--out` (default bench/results/) gets
`bench-<time>.json` (every run's figures, the summary, the machine) and `bench-<time>.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import report, store, stream, tasks
from bench.rig import Rig

WORKLOADS = ("latency", "throughput", "fanout", "catchup", "tasks", "store")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def plan_for(quick: bool, reps: int | None) -> tuple[stream.StreamPlan, dict[str, Any]]:
    if quick:
        plan = stream.StreamPlan(
            reps=reps or 1,
            latency_rates=(100, 1000),
            latency_seconds=1.0,
            throughput_events=2_000,
            fanout_watchers=(1, 100),
            fanout_rate=20,
            fanout_seconds=1.5,
            catchup_events=10_000,
        )
        other = {"task_counts": (1, 10), "store_counts": {"sqlite": 1_000, "redis": 300}}
    else:
        plan = stream.StreamPlan(
            reps=reps or 3,
            latency_rates=(100, 1000),
            latency_seconds=3.0,
            throughput_events=20_000,
            fanout_watchers=(1, 100, 1000),
            fanout_rate=20,
            fanout_seconds=5.0,
            catchup_events=100_000,
        )
        other = {"task_counts": (1, 50), "store_counts": {"sqlite": 10_000, "redis": 2_000}}
    return plan, other


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    from mitosis.gateway import envoy_binary

    envoy = subprocess.run(
        [envoy_binary(), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    redis = shutil.which("redis-server")
    redis_version = (
        subprocess.run([redis, "--version"], capture_output=True, text=True, check=False)
        .stdout.split(" sha=")[0]
        .strip()
        if redis
        else "not installed"
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": _version("grpcio"),
        "protobuf": _version("protobuf"),
        "envoy": next(
            (part for part in envoy.split("/") if part[:1].isdigit() and "." in part), envoy
        ),
        "envoy_build": envoy.split("version:")[-1].strip(),
        "python-socketio": _version("python-socketio"),
        "python-engineio": _version("python-engineio"),
        "uvicorn": _version("uvicorn"),
        "websockets": _version("websockets"),
        "uvloop": _version("uvloop"),
        "aiohttp": _version("aiohttp"),
        "redis-py": _version("redis"),
        "redis-server": redis_version,
        "load_average_at_start": os.getloadavg(),
    }


def machine_markdown(info: dict[str, Any]) -> str:
    return (
        f"Machine: {info['nproc']} cores ({info['cpu']}), {info['memory_gib']} GiB RAM,"
        f" Linux {info['kernel']}; Python {info['python']}, grpcio {info['grpcio']},"
        f" protobuf {info['protobuf']}, Envoy {info['envoy']}; python-socketio"
        f" {info['python-socketio']}, uvicorn {info['uvicorn']} (uvloop {info['uvloop']},"
        f" websockets {info['websockets']}), aiohttp {info['aiohttp']};"
        f" {info['redis-server']}. Load average at start"
        f" {', '.join(f'{x:.2f}' for x in info['load_average_at_start'])}."
    )


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> int:
    plan, other = plan_for(args.quick, args.reps)
    selected = [w for w in WORKLOADS if w in args.only] if args.only else list(WORKLOADS)
    info = machine()
    began = time.perf_counter()
    rows: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    workdir = Path(tempfile.mkdtemp(prefix="mitosis-bench-"))
    progress(f"workloads {', '.join(selected)}; {plan.reps} repetition(s); work folder {workdir}")
    # SIGTERM stops the run like Ctrl-C does: every process it started is stopped on the way out.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    try:
        async with AsyncExitStack() as stack:
            stream_workloads = {"latency", "throughput", "fanout", "catchup"} & set(selected)
            rig = None
            if stream_workloads:
                rig = await Rig(workdir, stack, args.profile).start()
                await stream.warm_up(rig, progress)
            for workload in selected:
                t0 = time.perf_counter()
                if workload == "latency" and rig:
                    rows += await stream.latency(rig, plan, progress)
                elif workload == "throughput" and rig:
                    rows += await stream.throughput(rig, plan, progress)
                elif workload == "fanout" and rig:
                    rows += await stream.fanout(rig, plan, progress)
                elif workload == "catchup" and rig:
                    rows += await stream.catch_up(rig, plan, progress)
                elif workload == "tasks":
                    rows += await tasks.tasks(
                        workdir / "tasks", plan.reps, other["task_counts"], progress
                    )
                elif workload == "store":
                    rows += await store.stores(
                        workdir / "store", plan.reps, other["store_counts"], progress
                    )
                timings[workload] = time.perf_counter() - t0
                progress(f"{workload} done in {timings[workload]:.0f} s")
    finally:
        if args.keep:
            progress(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    total = time.perf_counter() - began
    info["load_average_at_end"] = os.getloadavg()
    found = report.targets(rows, max(plan.fanout_watchers))
    mode = "quick" if args.quick else "full"
    text = (
        f"## Mitosis benchmarks ({mode} run, {time.strftime('%Y-%m-%d %H:%M')},"
        f" {total:.0f} s)\n\n{machine_markdown(info)}\n\n" + report.markdown(rows, found, plan.reps)
    )
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out / f"bench-{stamp}.md").write_text(text)
    result = {
        "mode": mode,
        "seconds": total,
        "workload_seconds": timings,
        "machine": info,
        "plan": {**plan.__dict__, **other},
        "targets": found,
        "runs": rows,
    }
    (args.out / f"bench-{stamp}.json").write_text(json.dumps(result, indent=1, default=str))
    progress(f"wrote {args.out / f'bench-{stamp}.json'} and .md; {total:.0f} s in all")
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark Mitosis's live stream against the bare transport and Socket.IO;"
        " print a Markdown table and write JSON.",
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run of every workload")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="folder for JSON and Markdown (%(default)s)"
    )
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3; quick 1)")
    parser.add_argument(
        "--only",
        type=lambda text: [w.strip() for w in text.split(",") if w.strip()],
        default=None,
        help=f"comma-separated workloads out of {','.join(WORKLOADS)}",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="record every executor the benchmark starts with py-spy (speedscope files in DIR)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (server logs)")
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="JSON",
        help="run nothing: print the tables of an earlier run from its JSON file",
    )
    args = parser.parse_args(argv)
    unknown = set(args.only or ()) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    return args


def render(path: Path) -> int:
    """Print the tables of an earlier run from its JSON."""
    result = json.loads(path.read_text())
    plan = result["plan"]
    found = report.targets(result["runs"], max(plan["fanout_watchers"]))
    print(
        f"{machine_markdown(result['machine'])}\n\n"
        + report.markdown(result["runs"], found, plan["reps"])
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        return render(args.render)
    try:
        return asyncio.run(run(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench: interrupted; the processes it started are stopped", file=sys.stderr)
        return 130
