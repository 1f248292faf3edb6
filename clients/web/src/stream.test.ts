import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import {
  HeartbeatSchema,
  LogLineSchema,
  Task_State,
  TaskEventSchema,
  TaskStateChangedSchema,
  type TaskEvent,
} from "./gen/mitosis/v1/task_pb";
import { backoffDelay, codeName, describeError, TaskStream, type ConnectionState } from "./stream";

function line(seq: number): TaskEvent {
  return create(TaskEventSchema, {
    taskId: "t",
    seq: BigInt(seq),
    kind: { case: "logLine", value: create(LogLineSchema, { text: `line ${seq}` }) },
  });
}

function heartbeat(seq: number): TaskEvent {
  return create(TaskEventSchema, {
    taskId: "t",
    seq: BigInt(seq),
    kind: { case: "heartbeat", value: create(HeartbeatSchema) },
  });
}

function done(seq: number): TaskEvent {
  return create(TaskEventSchema, {
    taskId: "t",
    seq: BigInt(seq),
    kind: {
      case: "taskStateChanged",
      value: create(TaskStateChangedSchema, { state: Task_State.SUCCEEDED }),
    },
  });
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A scripted server: each call to watch() runs the next script with the request's after_seq. */
type Script = (afterSeq: bigint, signal: AbortSignal) => AsyncIterable<TaskEvent>;

function harness(
  scripts: Script[],
  options: {
    watchdogMs?: number;
    initialBackoffMs?: number;
    onUnauthenticated?: (reason: string) => Promise<boolean>;
    probeMs?: number;
    answers?: () => Promise<boolean>;
  } = {},
) {
  const applied: number[] = [];
  const states: ConnectionState[] = [];
  const requests: bigint[] = [];
  const maxWaits: (number | undefined)[] = [];
  let duplicates = 0;
  const stream = new TaskStream({
    watch: (afterSeq, signal, onHeader, maxWaitMs) => {
      requests.push(afterSeq);
      maxWaits.push(maxWaitMs);
      const script = scripts.shift();
      if (!script) throw new Error("no more scripted connections");
      return (async function* () {
        onHeader();
        yield* script(afterSeq, signal);
      })();
    },
    onEvent: (event) => applied.push(Number(event.seq)),
    onState: (state) => states.push(state),
    onDuplicate: () => {
      duplicates += 1;
    },
    watchdogMs: options.watchdogMs ?? 1000,
    initialBackoffMs: options.initialBackoffMs ?? 5,
    maxBackoffMs: Math.max(40, options.initialBackoffMs ?? 0),
    random: () => 0.5,
    ...(options.onUnauthenticated ? { onUnauthenticated: options.onUnauthenticated } : {}),
    ...(options.probeMs ? { probeMs: options.probeMs } : {}),
    ...(options.answers ? { answers: options.answers } : {}),
    boundedWaitMs: 250,
  });
  return { stream, applied, states, requests, maxWaits, duplicates: () => duplicates };
}

/** Yield events until the signal aborts (then throw as fetch does). */
async function* until(signal: AbortSignal, events: TaskEvent[], thenHang = true) {
  for (const event of events) yield event;
  if (!thenHang) return;
  await new Promise((_, reject) => {
    signal.addEventListener("abort", () =>
      reject(new ConnectError("the operation was aborted", Code.Canceled)),
    );
  });
}

describe("backoffDelay", () => {
  it("doubles from the initial delay up to the cap, with jitter of up to half", () => {
    const max = (a: number) => backoffDelay(a, 500, 10_000, () => 1);
    const min = (a: number) => backoffDelay(a, 500, 10_000, () => 0);
    expect([1, 2, 3, 4, 5, 6, 7].map(max)).toEqual([500, 1000, 2000, 4000, 8000, 10000, 10000]);
    expect([1, 2, 3].map(min)).toEqual([250, 500, 1000]);
  });
});

describe("describeError", () => {
  it("says the gRPC code and the server's message", () => {
    const error = new ConnectError("task '0123' does not exist", Code.NotFound);
    expect(describeError(error)).toBe("NOT_FOUND: task '0123' does not exist");
    expect(codeName(Code.FailedPrecondition)).toBe("FAILED_PRECONDITION");
    expect(codeName(Code.Unavailable)).toBe("UNAVAILABLE");
  });

  it("says in words that the connection was lost when fetch itself failed", () => {
    for (const words of ["Failed to fetch", "NetworkError when attempting to fetch resource.", "Load failed"]) {
      expect(describeError(new TypeError(words))).toBe("the connection to the server was lost");
    }
    expect(describeError(new ConnectError("Failed to fetch", Code.Unknown))).toBe(
      "the connection to the server was lost",
    );
    expect(describeError(new ConnectError("boom", Code.Unknown))).toBe("UNKNOWN: boom");
  });
});

describe("TaskStream", () => {
  it("applies every event once and ends after the terminal event", async () => {
    const h = harness([(_, signal) => until(signal, [line(1), line(2), done(3)])]);
    await h.stream.start();
    expect(h.applied).toEqual([1, 2, 3]);
    expect(h.states.map((s) => s.kind)).toEqual(["connecting", "live", "ended"]);
  });

  it("resumes from the last seq after an error, dropping what was already applied", async () => {
    const h = harness([
      async function* () {
        yield line(1);
        yield line(2);
        throw new ConnectError("upstream reset", Code.Unavailable);
      },
      // The server replays one event too many: it must be dropped.
      (_, signal) => until(signal, [line(2), line(3), heartbeat(3), line(4), done(5)]),
    ]);
    await h.stream.start();
    expect(h.requests).toEqual([0n, 2n]);
    expect(h.applied).toEqual([1, 2, 3, 4, 5]);
    expect(h.duplicates()).toBe(1);
    const kinds = h.states.map((s) => s.kind);
    expect(kinds).toEqual(["connecting", "live", "reconnecting", "connecting", "live", "ended"]);
    const reconnecting = h.states[2];
    expect(reconnecting?.kind === "reconnecting" && reconnecting.reason).toContain("UNAVAILABLE");
  });

  it("reconnects when a stream ends without the terminal event", async () => {
    const h = harness([
      (_, signal) => until(signal, [line(1)], false),
      (_, signal) => until(signal, [done(2)]),
    ]);
    await h.stream.start();
    expect(h.requests).toEqual([0n, 1n]);
    expect(h.applied).toEqual([1, 2]);
  });

  it("aborts a silent stream when the watchdog fires, and resumes", async () => {
    const h = harness(
      [
        (_, signal) => until(signal, [line(1)]), // then silence
        (_, signal) => until(signal, [line(2), done(3)]),
      ],
      { watchdogMs: 50 },
    );
    await h.stream.start();
    expect(h.requests).toEqual([0n, 1n]);
    expect(h.applied).toEqual([1, 2, 3]);
    const reconnecting = h.states.find((s) => s.kind === "reconnecting");
    expect(reconnecting?.kind === "reconnecting" && reconnecting.reason).toMatch(/no data/);
  });

  it("heartbeats keep a quiet stream alive", async () => {
    const h = harness(
      [
        async function* () {
          yield line(1);
          for (let i = 0; i < 6; i++) {
            await sleep(20);
            yield heartbeat(1);
          }
          yield done(2);
        },
      ],
      { watchdogMs: 60 },
    );
    await h.stream.start();
    expect(h.requests).toEqual([0n]);
    expect(h.applied).toEqual([1, 2]);
  });

  it("backs off longer after each failed attempt and resets after a good one", async () => {
    const fail = async function* (): AsyncIterable<TaskEvent> {
      throw new ConnectError("connection refused", Code.Unavailable);
    };
    const h = harness([
      fail,
      fail,
      fail,
      async function* () {
        yield line(1);
        throw new ConnectError("reset", Code.Unavailable);
      },
      (_, signal) => until(signal, [done(2)]),
    ]);
    await h.stream.start();
    const attempts = h.states.flatMap((s) => (s.kind === "reconnecting" ? [s.attempt] : []));
    expect(attempts).toEqual([1, 2, 3, 1]);
  });

  it("stops on an error another attempt cannot fix", async () => {
    const h = harness([
      async function* () {
        throw new ConnectError("task 'x' does not exist", Code.NotFound);
      },
    ]);
    await h.stream.start();
    const last = h.states.at(-1);
    expect(last).toMatchObject({ kind: "error", code: Code.NotFound });
    expect(last?.kind === "error" && last.message).toBe("NOT_FOUND: task 'x' does not exist");
  });

  it("a refused key is asked for again and the stream resumes at once with the new one", async () => {
    const reasons: string[] = [];
    const h = harness(
      [
        async function* () {
          yield line(1);
          yield line(2);
          throw new ConnectError("unknown API key", Code.Unauthenticated); // the key was revoked
        },
        (_, signal) => until(signal, [line(3), done(4)]),
      ],
      {
        initialBackoffMs: 10_000, // a backoff wait would time the test out
        onUnauthenticated: async (reason) => {
          reasons.push(reason);
          return true;
        },
      },
    );
    await h.stream.start();
    expect(reasons).toEqual(["unknown API key"]);
    expect(h.requests).toEqual([0n, 2n]);
    expect(h.applied).toEqual([1, 2, 3, 4]);
  });

  it("stops with UNAUTHENTICATED when no new key is given", async () => {
    const h = harness(
      [
        async function* () {
          throw new ConnectError("this service needs an API key", Code.Unauthenticated);
        },
      ],
      { onUnauthenticated: async () => false },
    );
    await h.stream.start();
    expect(h.states.at(-1)).toMatchObject({ kind: "error", code: Code.Unauthenticated });
  });

  it("stop() aborts the call and ends quietly", async () => {
    let aborted = false;
    const h = harness([
      (_, signal) => {
        signal.addEventListener("abort", () => (aborted = true));
        return until(signal, [line(1)]);
      },
    ]);
    const running = h.stream.start();
    await sleep(10);
    h.stream.stop();
    await running;
    expect(aborted).toBe(true);
    expect(h.applied).toEqual([1]);
    expect(h.states.at(-1)?.kind).toBe("live");
  });

  it("reconnectNow skips the backoff wait", async () => {
    // A long backoff: only reconnectNow can make this finish in time.
    const h = harness(
      [
        async function* () {
          throw new ConnectError("refused", Code.Unavailable);
        },
        (_, signal) => until(signal, [done(1)]),
      ],
      { initialBackoffMs: 60_000 },
    );
    const running = h.stream.start();
    await sleep(10);
    expect(h.stream.connectionState.kind).toBe("reconnecting");
    h.stream.reconnectNow("back online");
    await running;
    expect(h.applied).toEqual([1]);
  });
});

describe("TaskStream.reconnectNow", () => {
  it("replaces a connection that missed a heartbeat at once, without backoff", async () => {
    const h = harness(
      [
        (_, signal) => until(signal, [line(1)]), // then silence
        (_, signal) => until(signal, [line(2), done(3)]),
      ],
      { watchdogMs: 300, initialBackoffMs: 60_000 },
    );
    const running = h.stream.start();
    await sleep(150); // silent for more than a third of the watchdog time
    h.stream.reconnectNow("back online");
    await running;
    expect(h.requests).toEqual([0n, 1n]);
    expect(h.applied).toEqual([1, 2, 3]);
    expect(h.states.some((s) => s.kind === "reconnecting")).toBe(false);
  });

  it("keeps a connection that is receiving", async () => {
    const h = harness([
      async function* () {
        yield line(1);
        await sleep(30);
        yield line(2);
        yield done(3);
      },
    ]);
    const running = h.stream.start();
    await sleep(5);
    h.stream.reconnectNow("back online");
    await running;
    expect(h.requests).toEqual([0n]);
  });
});

describe("TaskStream through a path that holds back streams", () => {
  /** What such a path does: a live call delivers nothing; a bounded one ends whole. */
  const heldBack: Script = (_, signal) => until(signal, []);
  const bounded =
    (...events: TaskEvent[]): Script =>
    () =>
      until(new AbortController().signal, events, false);

  it("switches to bounded calls when the first message does not come", async () => {
    const h = harness(
      [heldBack, bounded(line(1), line(2)), bounded(heartbeat(2)), bounded(line(3), done(4))],
      { probeMs: 30, initialBackoffMs: 60_000, answers: async () => true },
    );
    await h.stream.start();
    expect(h.applied).toEqual([1, 2, 3, 4]);
    expect(h.requests).toEqual([0n, 0n, 2n, 2n]);
    expect(h.maxWaits).toEqual([undefined, 250, 250, 250]);
    expect(h.stream.bounded).toBe(true);
    expect(h.states).toContainEqual({ kind: "live", bounded: true });
    expect(h.states.some((s) => s.kind === "reconnecting")).toBe(false);
  });

  it("stays live when the server does not answer either: that is an outage", async () => {
    const h = harness([heldBack, (_, signal) => until(signal, [line(1), done(2)])], {
      probeMs: 20,
      watchdogMs: 80,
      answers: async () => false,
    });
    await h.stream.start();
    expect(h.applied).toEqual([1, 2]);
    expect(h.maxWaits).toEqual([undefined, undefined]);
    expect(h.stream.bounded).toBe(false);
  });
});
