"""The Markdown tables and the targets, from the rows the workloads return."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from bench.rig import LABELS, TRANSPORTS
from bench.stats import Spread

Row = dict[str, Any]

MIB = 2**20
TIMES = "\u00d7"
FANOUT_LABELS = {
    "mitosis-native": "Mitosis, native gRPC",
    "mitosis-web": "Mitosis, gRPC-Web via Envoy",
    "bare-web": "bare grpcio, gRPC-Web via Envoy",
}


def _rows(rows: Iterable[Row], workload: str, **match: Any) -> list[Row]:
    return [
        r
        for r in rows
        if r["workload"] == workload and all(r.get(k) == v for k, v in match.items())
    ]


def _task_rows(rows: Iterable[Row], approval: bool, **match: Any) -> list[Row]:
    """The tasks workload's rows of one kind: run to the end, or planned and waiting for
    approval (runs from before that row have no "approval": they ran)."""
    return [r for r in _rows(rows, "tasks", **match) if bool(r.get("approval")) == approval]


def _spread(rows: list[Row], key: str | Callable[[Row], float]) -> Spread:
    get = key if callable(key) else (lambda r: float(r[key]))
    return Spread.of([get(r) for r in rows])


def _having(rows: list[Row], key: str) -> list[Row]:
    """The rows that have `key` (runs from before it was measured have not)."""
    return [r for r in rows if key in r]


def _per_rep_ratio(rows: list[Row], workload: str, key: str, num: Row, den: Row) -> Spread:
    """The ratio of two rows' `key` taken within each repetition, then over repetitions."""
    ratios = []
    for rep in sorted({r["rep"] for r in rows if r["workload"] == workload}):
        a = _rows(rows, workload, rep=rep, **num)
        b = _rows(rows, workload, rep=rep, **den)
        if a and b and b[0][key]:
            ratios.append(a[0][key] / b[0][key])
    return Spread.of(ratios)


def _table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def targets(rows: list[Row], fanout_max: int) -> list[Row]:
    """Each target of issue 6 with what was measured, as ratios within one run."""
    found: list[Row] = []

    def add(name: str, goal: str, spread: Spread, met: bool | None, shown: str) -> None:
        found.append(
            {"target": name, "goal": goal, "measured": shown, "met": met, **spread.as_dict()}
        )

    web, bare, sio = (
        {"transport": "mitosis-web"},
        {"transport": "bare-web"},
        {"transport": "socketio"},
    )
    if _rows(rows, "throughput"):
        ratio = _per_rep_ratio(rows, "throughput", "events_per_s", web, bare)
        add(
            "Throughput through Envoy vs bare transport",
            "\u2265 0.70\u00d7",
            ratio,
            ratio.median >= 0.70 if ratio.n else None,
            ratio.show(2, TIMES),
        )
        ratio = _per_rep_ratio(rows, "throughput", "events_per_s", web, sio)
        add(
            "Throughput through Envoy vs Socket.IO",
            "\u2265 1.5\u00d7",
            ratio,
            ratio.median >= 1.5 if ratio.n else None,
            ratio.show(2, TIMES),
        )
    latency = _rows(rows, "latency")
    if latency:
        top = max(r["rate"] for r in latency)
        ratio = _per_rep_ratio(
            rows, "latency", "p99_ms", {**web, "rate": top}, {**bare, "rate": top}
        )
        add(
            f"p99 through Envoy at {top:g} ev/s vs bare p99",
            "\u2264 2\u00d7",
            ratio,
            ratio.median <= 2 if ratio.n else None,
            ratio.show(2, TIMES),
        )
        p99 = _spread(_rows(rows, "latency", rate=top, **web), "p99_ms")
        add(
            f"p99 through Envoy at {top:g} ev/s",
            "< 10 ms",
            p99,
            p99.median < 10 if p99.n else None,
            p99.show(2, " ms"),
        )
    fan = [r for r in _rows(rows, "fanout", watchers=fanout_max) if r["transport"] != "bare-web"]
    if fan:
        all_in = all(r["complete_watchers"] == r["watchers"] for r in fan)
        delivered = Spread.of([r["delivered"] / r["expected"] for r in fan])
        add(
            f"{fanout_max:,} watchers: every event to every watcher",
            "all, by seq",
            delivered,
            all_in,
            f"{sum(r['complete_watchers'] for r in fan):,} of"
            f" {sum(r['watchers'] for r in fan):,} watcher-runs complete",
        )
        rate = fan[0]["rate"]
        for kind in ("native", "web"):
            p99 = _spread([r for r in fan if r["transport"] == f"mitosis-{kind}"], "p99_ms")
            add(
                f"{fanout_max:,} watchers ({kind}): p99 at {rate:g} ev/s",
                "< 100 ms",
                p99,
                p99.median < 100 if p99.n else None,
                p99.show(1, " ms"),
            )
        for kind in ("native", "web"):
            rss = _spread(
                [r for r in fan if r["transport"] == f"mitosis-{kind}"],
                lambda r: r["server_rss_extra_per_1000"] / MIB,
            )
            add(
                f"{fanout_max:,} watchers ({kind}): executor extra RSS per 1,000",
                "< 64 MiB",
                rss,
                rss.median < 64 if rss.n else None,
                rss.show(1, " MiB"),
            )
    catch = _rows(rows, "catchup", transport="mitosis-native")
    if catch:
        rate = _spread(catch, "events_per_s")
        add(
            f"Catch-up replay of {catch[0]['expected'] - 1:,} events (native)",
            "≥ 50,000 ev/s",
            rate,
            rate.median >= 50_000 if rate.n else None,
            rate.show(0, " ev/s"),
        )
    tasks = _task_rows(rows, approval=False)
    if tasks:
        top = max(r["tasks"] for r in tasks)
        first = _spread(_task_rows(rows, approval=False, tasks=top), "first_event_p50_ms")
        add(
            f"First event after CreateTask, p50, {top} concurrent tasks",
            "≤ 20 ms",
            first,
            first.median <= 20 if first.n else None,
            first.show(1, " ms"),
        )
    return found


def markdown(rows: list[Row], found_targets: list[Row], reps: int) -> str:
    """All the tables: each cell is the median over repetitions, (min-max) after it."""
    parts = [
        f"Each cell: median over {reps} repetition{'s' if reps > 1 else ''}, (min\u2013max) after"
        " it. Ratios are taken within each repetition, then the median."
    ]
    latency = _rows(rows, "latency")
    if latency:
        lines = []
        for rate in sorted({r["rate"] for r in latency}):
            for transport in TRANSPORTS:
                sel = _rows(rows, "latency", rate=rate, transport=transport)
                if not sel:
                    continue
                complete = sum(r["complete_watchers"] for r in sel)
                lines.append(
                    [
                        LABELS[transport],
                        f"{rate:g}",
                        _spread(sel, "p50_ms").show(2),
                        _spread(sel, "p99_ms").show(2),
                        _spread(sel, "max_ms").show(1),
                        f"{complete}/{len(sel)}",
                    ]
                )
        parts.append(
            "### 1. Latency: event `create_time` → arrival at the client (ms)\n\n"
            + _table(["transport", "events/s", "p50", "p99", "max", "runs complete"], lines)
        )
    thr = _rows(rows, "throughput")
    bare = {"transport": "bare-web"}
    sio = {"transport": "socketio"}
    if thr:
        lines = []
        for transport in TRANSPORTS:
            sel = _rows(rows, "throughput", transport=transport)
            if not sel:
                continue
            this = {"transport": transport}
            vs_bare = _per_rep_ratio(rows, "throughput", "events_per_s", this, bare)
            vs_sio = _per_rep_ratio(rows, "throughput", "events_per_s", this, sio)
            lines.append(
                [
                    LABELS[transport],
                    _spread(sel, "events_per_s").show(0),
                    vs_bare.show(2, TIMES),
                    vs_sio.show(2, TIMES),
                    _spread(sel, lambda r: r["server_cores"] / r["events_per_s"] * 1e6).show(0),
                    _spread(sel, "client_cores").show(2),
                    f"{sum(r['complete_watchers'] for r in sel)}/{len(sel)}",
                ]
            )
        parts.append(
            f"### 2. Throughput: one watcher, {thr[0]['count']:,} events appended as fast as"
            " possible, live\n\n"
            + _table(
                [
                    "transport",
                    "events/s",
                    "vs bare gRPC-Web",
                    "vs Socket.IO",
                    "server CPU µs/event",
                    "client cores",
                    "runs complete",
                ],
                lines,
            )
        )
    fan = _rows(rows, "fanout")
    if fan:
        lines = []
        for watchers in sorted({r["watchers"] for r in fan}):
            for transport in ("mitosis-native", "mitosis-web", "bare-web"):
                sel = _rows(rows, "fanout", watchers=watchers, transport=transport)
                if not sel:
                    continue
                mitosis = transport.startswith("mitosis")
                scaled = watchers >= 100  # per 1,000 from one watcher says nothing
                lines.append(
                    [
                        FANOUT_LABELS[transport],
                        f"{watchers:,}",
                        f"{sum(r['complete_watchers'] for r in sel):,}/"
                        f"{sum(r['watchers'] for r in sel):,}",
                        _spread(sel, "p50_ms").show(1),
                        _spread(sel, "p99_ms").show(1),
                        _spread(sel, "server_cores").show(2),
                        _spread(sel, "server_cores_per_1000").show(2) if scaled else "—",
                        _spread(sel, lambda r: r["server_rss_extra"] / MIB).show(1)
                        if mitosis
                        else "—",
                        _spread(sel, lambda r: r["server_rss_extra_per_1000"] / MIB).show(1)
                        if mitosis and scaled
                        else "—",
                        _spread(sel, "envoy_cores").show(2) if "web" in transport else "—",
                        _spread(sel, "client_cores").show(2),
                        _spread(sel, "machine_cores").show(2),
                    ]
                )
        parts.append(
            f"### 3. Fan-out: watchers on one task at {fan[0]['rate']:g} events/s,"
            f" {fan[0]['count']} events each\n\n"
            "CPU in cores busy while the events flow (server: the executor, or the bare server;"
            " client: the benchmark's own process, which runs every watcher; machine: every"
            " process on the machine, other users' too, out of 2). Memory is the executor's peak"
            " RSS above its RSS before the watchers connected, each Mitosis configuration on a"
            " freshly started executor.\n\n"
            + _table(
                [
                    "path",
                    "watchers",
                    "complete (by seq)",
                    "p50 ms",
                    "p99 ms",
                    "server cores",
                    "cores per 1,000",
                    "extra RSS MiB",
                    "MiB per 1,000",
                    "Envoy cores",
                    "client cores",
                    "machine cores",
                ],
                lines,
            )
        )
    catch = _rows(rows, "catchup")
    if catch:
        lines = []
        for transport in ("mitosis-native", "mitosis-web"):
            sel = _rows(rows, "catchup", transport=transport)
            if sel:
                lines.append(
                    [
                        LABELS[transport],
                        f"{sel[0]['expected']:,}",
                        _spread(sel, "seconds").show(2),
                        _spread(sel, "events_per_s").show(0),
                        f"{sum(bool(r['complete']) for r in sel)}/{len(sel)}",
                    ]
                )
        parts.append(
            "### 4. Catch-up: a finished task replayed from the store to a new watcher\n\n"
            + _table(["transport", "events", "seconds", "events/s", "runs complete"], lines)
        )
    tasks = _rows(rows, "tasks")
    if tasks:
        lines = []
        for approval, n in sorted({(bool(r.get("approval")), r["tasks"]) for r in tasks}):
            sel = _task_rows(rows, approval=approval, tasks=n)
            lines.append(
                [
                    f"{n}, planned, none run" if approval else f"{n}",
                    _spread(sel, "first_event_p50_ms").show(1),
                    _spread(sel, "first_event_p99_ms").show(1),
                    _spread(sel, "created_p50_ms").show(1),
                    _spread(_having(sel, "created_p99_ms"), "created_p99_ms").show(1),
                    _spread(sel, "first_stored_p50_ms").show(1),
                    _spread(_having(sel, "get_task_p50_ms"), "get_task_p50_ms").show(1),
                    _spread(_having(sel, "get_task_p99_ms"), "get_task_p99_ms").show(1),
                    _spread(sel, "task_p50_s").show(2),
                    _spread(sel, "wall_s").show(2),
                    f"{sum(r['succeeded'] for r in sel)}/{sum(r['tasks'] for r in sel)}",
                ]
            )
        parts.append(
            "### 5. Tasks: offline model, pacing off, all created at once\n\n"
            'In the rows "planned, none run" every task asks for approval: it is planned,'
            ' waits, and is cancelled after the batch; its "succeeded" counts the plans that'
            " came to wait, its time ends there.\n\n"
            + _table(
                [
                    "concurrent tasks",
                    "CreateTask → first event p50 ms",
                    "p99 ms",
                    "CreateTask answered p50 ms",
                    "p99 ms",
                    "first event stored p50 ms",
                    "GetTask meanwhile p50 ms",
                    "p99 ms",
                    "one task's time p50 s",
                    "wall time s",
                    "succeeded",
                ],
                lines,
            )
        )
    store = _rows(rows, "store")
    if store:
        lines = []
        for name in ("sqlite", "redis"):
            for writers, batch in ((1, 1), (20, 1), (1, 1000)):
                # Runs from before the concurrent row have no "tasks": one task.
                sel = [
                    r
                    for r in _rows(rows, "store", store=name, batch=batch)
                    if r.get("tasks", 1) == writers
                ]
                if sel:
                    lines.append(
                        [
                            {"sqlite": "SQLite (WAL, synchronous=NORMAL)", "redis": "Redis"}[name],
                            f"{writers}",
                            f"{batch:,}",
                            _spread(sel, "appends_per_s").show(0),
                            _spread(sel, "events_per_s").show(0),
                            _spread(sel, lambda r: r.get("appends_per_commit", 1.0)).show(1),
                            _spread(sel, "append_p50_us").show(0),
                            _spread(sel, "append_p99_us").show(0),
                            _spread(sel, "append_max_us").show(0),
                        ]
                    )
        parts.append(
            "### 6. Store: appends\n\n"
            + _table(
                [
                    "store",
                    "tasks appending at once",
                    "events per append",
                    "appends/s",
                    "events/s",
                    "appends per transaction / round trip",
                    "append p50 µs",
                    "p99 µs",
                    "max µs",
                ],
                lines,
            )
        )
    script = _rows(rows, "script")
    if script:
        parts.append(
            f"### 7. Script output: a python step printing {script[0]['lines']:,} lines\n\n"
            + _table(
                ["seconds", "lines/s", "lines per append"],
                [
                    [
                        _spread(script, "seconds").show(2),
                        _spread(script, "lines_per_s").show(0),
                        _spread(script, "lines_per_append").show(1),
                    ]
                ],
            )
        )
    if found_targets:
        lines = [
            [
                t["target"],
                t["goal"],
                t["measured"],
                "—" if t["met"] is None else ("met" if t["met"] else "**missed**"),
            ]
            for t in found_targets
        ]
        parts.insert(
            1, "### Targets (issue 6)\n\n" + _table(["target", "goal", "measured", ""], lines)
        )
    return "\n\n".join(parts) + "\n"
