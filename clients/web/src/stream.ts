// The live stream of one task: WatchTask with resume from the last seq, de-duplication,
// reconnect with exponential backoff and jitter, a heartbeat watchdog, and bounded calls
// when the network path holds back streamed responses (a proxy that buffers them whole).
//
// Pure of the DOM: the caller injects how to watch, the clock and the randomness, so the
// logic runs under vitest as it runs in the browser.

import { Code, ConnectError } from "@connectrpc/connect";
import type { TaskEvent } from "./gen/mitosis/v1/task_pb";
import { isTerminalEvent } from "./model";

/** What the header says about the connection. */
export type ConnectionState =
  | { kind: "idle" }
  | { kind: "connecting"; attempt: number }
  /** Receiving; `bounded`: by bounded calls, because the path holds back streams. */
  | { kind: "live"; bounded?: boolean }
  | {
      kind: "reconnecting";
      /** The reconnect attempt this wait leads to, counting from 1. */
      attempt: number;
      /** When (clock time, ms) the attempt starts. */
      at: number;
      /** Why the previous connection ended. */
      reason: string;
    }
  | { kind: "offline" }
  | { kind: "ended" }
  | { kind: "error"; message: string; code: Code | undefined };

/**
 * Opens one WatchTask call. `onHeader` runs when the response headers arrive. `maxWaitMs`
 * undefined: a live stream; set: the bounded form, a response that ends that long after
 * its first event (see WatchTaskRequest.max_wait).
 */
export type WatchFn = (
  afterSeq: bigint,
  signal: AbortSignal,
  onHeader: () => void,
  maxWaitMs: number | undefined,
) => AsyncIterable<TaskEvent>;

/** The events of WatchTask's messages (each carries a batch), one by one. */
export async function* eachEvent(
  messages: AsyncIterable<{ events: TaskEvent[] }>,
): AsyncIterable<TaskEvent> {
  for await (const message of messages) yield* message.events;
}

/** Timers, injectable for tests. */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const browserClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(handle as ReturnType<typeof setTimeout>),
};

export interface TaskStreamOptions {
  watch: WatchFn;
  /** Each stored event exactly once, in seq order (heartbeats are not passed on). */
  onEvent: (event: TaskEvent) => void;
  onState: (state: ConnectionState) => void;
  /** Reconnect when nothing (not even a heartbeat) arrived for this long. */
  watchdogMs: number;
  /** Resume after this seq (0: the whole log). */
  afterSeq?: bigint;
  /**
   * A live call's first message comes at once; when none came for this long while
   * `answers` says the server is reachable, the path holds back streams: go on with
   * bounded calls.
   */
  probeMs?: number;
  /** How long a bounded response may go on after its first event. */
  boundedWaitMs?: number;
  /** Whether a unary call reaches the server now (GetTask); assumed true without it. */
  answers?: () => Promise<boolean>;
  /** Start with bounded calls (an earlier stream found that the path holds streams back). */
  bounded?: boolean;
  /** Told once when this stream switches to bounded calls. */
  onBounded?: () => void;
  initialBackoffMs?: number;
  maxBackoffMs?: number;
  random?: () => number;
  clock?: Clock;
  isOnline?: () => boolean;
  /** Called for an event with a seq already seen (dropped); for the debug hook. */
  onDuplicate?: (event: TaskEvent) => void;
  /**
   * The server refused the call's API key (UNAUTHENTICATED, with its words). Resolve true
   * when there is a new key to try (the stream reconnects at once), false to stop with the
   * error.
   */
  onUnauthenticated?: (reason: string) => Promise<boolean>;
}

/** Errors that another attempt cannot fix: show them and stop. */
const PERMANENT = new Set<Code>([
  Code.NotFound,
  Code.InvalidArgument,
  Code.OutOfRange,
  Code.PermissionDenied,
  Code.Unauthenticated,
  Code.Unimplemented,
  Code.FailedPrecondition,
]);

/** The delay before reconnect attempt `attempt` (from 1): exponential, capped, jittered. */
export function backoffDelay(
  attempt: number,
  initialMs: number,
  maxMs: number,
  random: () => number,
): number {
  const base = Math.min(maxMs, initialMs * 2 ** Math.max(0, attempt - 1));
  // "Equal jitter": at least half the base, so a herd spreads out without reconnecting
  // immediately.
  return Math.round(base / 2 + (random() * base) / 2);
}

/** A readable "CODE: message" for any error a call raised. */
export function describeError(err: unknown): string {
  const error = ConnectError.from(err);
  if (isConnectionLoss(error)) return "the connection to the server was lost";
  return `${codeName(error.code)}: ${error.rawMessage || "(no message)"}`;
}

/** The browser's fetch failed before any answer came: it names no gRPC status, only a
 *  TypeError in each browser's words ("Failed to fetch", "NetworkError when attempting to
 *  fetch resource.", "Load failed"), which Connect reports as UNKNOWN. */
function isConnectionLoss(error: ConnectError): boolean {
  if (error.code !== Code.Unknown) return false;
  return (
    error.cause instanceof TypeError ||
    /failed to fetch|networkerror|load failed|network connection was lost/i.test(error.rawMessage)
  );
}

/** `Code.NotFound` → "NOT_FOUND", as gRPC spells it. */
export function codeName(code: Code): string {
  const name = Code[code] ?? `CODE_${code}`;
  return name.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

export class TaskStream {
  /** The seq of the last event applied; the next connection resumes after it. */
  lastSeq: bigint;
  /** Connections opened so far (the first one included). */
  connections = 0;

  /** Whether the stream has switched to bounded calls (the path holds back streams). */
  bounded = false;

  private readonly opts: Required<
    Omit<
      TaskStreamOptions,
      | "afterSeq"
      | "onDuplicate"
      | "isOnline"
      | "onUnauthenticated"
      | "answers"
      | "bounded"
      | "onBounded"
    >
  > &
    Pick<
      TaskStreamOptions,
      "onDuplicate" | "isOnline" | "onUnauthenticated" | "answers" | "onBounded"
    >;
  private stopped = false;
  private running = false;
  private current: AbortController | undefined;
  private abortReason = "";
  private abortImmediate = false;
  private lastMessageAt = 0;
  private wakeUp: (() => void) | undefined;
  private state: ConnectionState = { kind: "idle" };

  constructor(options: TaskStreamOptions) {
    this.lastSeq = options.afterSeq ?? 0n;
    this.bounded = options.bounded ?? false;
    this.opts = {
      initialBackoffMs: 500,
      maxBackoffMs: 10_000,
      probeMs: 2_000,
      boundedWaitMs: 500,
      random: Math.random,
      clock: browserClock,
      ...options,
    };
  }

  /** The current connection state. */
  get connectionState(): ConnectionState {
    return this.state;
  }

  /** Start watching; resolves when the stream has ended for good (or was stopped). */
  start(): Promise<void> {
    if (this.running) throw new Error("TaskStream already started");
    this.running = true;
    return this.run();
  }

  /** Stop for good: abort the call and any wait. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.current?.abort();
    this.wake();
  }

  /**
   * Reconnect without waiting: on the browser's `online` event, or when the tab comes back
   * after sleep. A waiting reconnect starts at once; an open connection that has missed a
   * heartbeat (silent for a third of the watchdog time) is replaced at once; one that is
   * still receiving is kept.
   */
  reconnectNow(reason: string): void {
    if (this.stopped || !this.running) return;
    if (this.current) {
      const silentFor = this.opts.clock.now() - this.lastMessageAt;
      if (silentFor > this.opts.watchdogMs / 3) this.abort(reason, true);
      return;
    }
    this.wake();
  }

  private setState(state: ConnectionState): void {
    this.state = state;
    this.opts.onState(state);
  }

  private abort(reason: string, immediate = false): void {
    this.abortReason = reason;
    this.abortImmediate = immediate;
    this.current?.abort();
  }

  private wake(): void {
    const wake = this.wakeUp;
    this.wakeUp = undefined;
    wake?.();
  }

  /** Wait `ms`, or until woken (reconnectNow, online, stop). */
  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const handle = this.opts.clock.setTimeout(() => this.wake(), ms);
      this.wakeUp = () => {
        this.opts.clock.clearTimeout(handle);
        resolve();
      };
    });
  }

  private online(): boolean {
    return this.opts.isOnline ? this.opts.isOnline() : true;
  }

  private async run(): Promise<void> {
    const { clock } = this.opts;
    let failures = 0;
    while (!this.stopped) {
      if (!this.online()) {
        this.setState({ kind: "offline" });
        await this.sleep(this.opts.maxBackoffMs); // the `online` event wakes it sooner
        continue;
      }
      const outcome = await this.connect(failures + 1);
      if (outcome.kind === "done" || this.stopped) return;
      if (outcome.kind === "error") {
        this.setState({ kind: "error", message: outcome.message, code: outcome.code });
        return;
      }
      if (outcome.immediate) {
        failures = 0; // replaced on purpose (back online, tab visible, bounded): no backoff
        continue;
      }
      failures = outcome.heardAnything ? 1 : failures + 1;
      const delay = backoffDelay(
        failures,
        this.opts.initialBackoffMs,
        this.opts.maxBackoffMs,
        this.opts.random,
      );
      this.setState({
        kind: "reconnecting",
        attempt: failures,
        at: clock.now() + delay,
        reason: outcome.reason,
      });
      await this.sleep(delay);
    }
  }

  /** No first message in time: if the server answers, switch to bounded calls. */
  private async probeFailed(controller: AbortController): Promise<void> {
    const reachable = this.opts.answers ? await this.opts.answers() : true;
    if (!reachable || this.current !== controller || this.stopped) return;
    this.bounded = true;
    this.opts.onBounded?.();
    this.abort("the network path holds back streamed responses", true);
  }

  private async connect(
    attempt: number,
  ): Promise<
    | { kind: "done" }
    | { kind: "error"; message: string; code: Code }
    | { kind: "retry"; reason: string; heardAnything: boolean; immediate?: boolean }
  > {
    const { clock, watchdogMs } = this.opts;
    const controller = new AbortController();
    this.current = controller;
    this.abortReason = "";
    this.abortImmediate = false;
    this.connections += 1;
    const bounded = this.bounded;
    // Bounded calls follow one another; between two of them the stream is still live.
    if (!(bounded && this.state.kind === "live")) this.setState({ kind: "connecting", attempt });

    let heardAnything = false;
    let watchdog: unknown;
    const armWatchdog = () => {
      clock.clearTimeout(watchdog);
      watchdog = clock.setTimeout(
        () => this.abort(`no data for ${Math.round(watchdogMs / 100) / 10} s`),
        watchdogMs,
      );
    };
    const heard = () => {
      this.lastMessageAt = clock.now();
      armWatchdog();
      if (this.state.kind !== "live" || (this.state.bounded ?? false) !== bounded) {
        this.setState(bounded ? { kind: "live", bounded } : { kind: "live" });
      }
    };
    // A live call's first message comes at once, unless the path holds it back.
    let probe: unknown;
    if (!bounded) {
      probe = clock.setTimeout(() => {
        void this.probeFailed(controller);
      }, this.opts.probeMs);
    }
    this.lastMessageAt = clock.now();
    armWatchdog();
    try {
      const maxWaitMs = bounded ? this.opts.boundedWaitMs : undefined;
      const events = this.opts.watch(this.lastSeq, controller.signal, heard, maxWaitMs);
      for await (const event of events) {
        clock.clearTimeout(probe);
        heard();
        heardAnything = true;
        if (event.kind.case === "heartbeat") continue;
        if (event.seq <= this.lastSeq) {
          this.opts.onDuplicate?.(event);
          continue;
        }
        this.lastSeq = event.seq;
        try {
          this.opts.onEvent(event);
        } catch (viewError) {
          // A bug in drawing one event must not stop the stream (or replay it forever).
          console.error("applying event", event.seq, viewError);
        }
        if (isTerminalEvent(event)) {
          this.setState({ kind: "ended" });
          return { kind: "done" };
        }
      }
      if (this.stopped) return { kind: "done" };
      if (bounded && heardAnything) {
        return { kind: "retry", reason: "a bounded call ended", heardAnything, immediate: true };
      }
      return { kind: "retry", reason: "the stream ended early", heardAnything };
    } catch (err) {
      if (this.stopped) return { kind: "done" };
      if (this.abortReason) {
        const immediate = this.abortImmediate;
        return { kind: "retry", reason: this.abortReason, heardAnything, immediate };
      }
      const error = ConnectError.from(err);
      if (error.code === Code.Unauthenticated && this.opts.onUnauthenticated) {
        const retry = await this.opts.onUnauthenticated(error.rawMessage);
        if (this.stopped) return { kind: "done" };
        if (retry) return { kind: "retry", reason: "a new API key", heardAnything, immediate: true };
      }
      if (PERMANENT.has(error.code)) {
        return { kind: "error", message: describeError(error), code: error.code };
      }
      return { kind: "retry", reason: describeError(error), heardAnything };
    } finally {
      clock.clearTimeout(watchdog);
      clock.clearTimeout(probe);
      this.current = undefined;
      controller.abort(); // release the fetch if the loop ended without it
    }
  }
}
