// Small pure helpers over the generated types: states, labels, sizes, times.

import { timestampMs, type Timestamp } from "@bufbuild/protobuf/wkt";
import {
  LogLine_Source,
  Step_State,
  Task_State,
  type TaskEvent,
} from "./gen/mitosis/v1/task_pb";

export const TERMINAL_TASK_STATES: ReadonlySet<Task_State> = new Set([
  Task_State.SUCCEEDED,
  Task_State.FAILED,
  Task_State.CANCELLED,
]);

/** True for the event that ends a task's log (WatchTask ends after it). */
export function isTerminalEvent(event: TaskEvent): boolean {
  return (
    event.kind.case === "taskStateChanged" &&
    TERMINAL_TASK_STATES.has(event.kind.value.state)
  );
}

export function isTerminalState(state: Task_State): boolean {
  return TERMINAL_TASK_STATES.has(state);
}

const TASK_STATE_LABELS: Record<Task_State, string> = {
  [Task_State.UNSPECIFIED]: "unknown",
  [Task_State.PENDING]: "pending",
  [Task_State.PLANNING]: "planning",
  [Task_State.RUNNING]: "running",
  [Task_State.SUCCEEDED]: "succeeded",
  [Task_State.FAILED]: "failed",
  [Task_State.CANCELLED]: "cancelled",
  [Task_State.AWAITING_APPROVAL]: "awaiting approval",
};

const STEP_STATE_LABELS: Record<Step_State, string> = {
  [Step_State.UNSPECIFIED]: "unknown",
  [Step_State.PENDING]: "pending",
  [Step_State.RUNNING]: "running",
  [Step_State.SUCCEEDED]: "succeeded",
  [Step_State.FAILED]: "failed",
  [Step_State.CANCELLED]: "cancelled",
};

export function taskStateLabel(state: Task_State): string {
  return TASK_STATE_LABELS[state] ?? `state ${state}`;
}

export function stepStateLabel(state: Step_State): string {
  return STEP_STATE_LABELS[state] ?? `state ${state}`;
}

/** A CSS-friendly token for a state label: "awaiting approval" → "awaiting-approval". */
export function stateClass(label: string): string {
  return label.replace(/\s+/g, "-");
}

export function logSourceLabel(source: LogLine_Source): string {
  switch (source) {
    case LogLine_Source.STDOUT:
      return "stdout";
    case LogLine_Source.STDERR:
      return "stderr";
    case LogLine_Source.EXECUTOR:
      return "executor";
    default:
      return "log";
  }
}

/** How the UI names a model; the offline model is said plainly. */
export function modelLabel(model: string): string {
  if (!model) return "model not chosen yet";
  if (model === "offline") return "offline model (deterministic, no network)";
  return `model ${model}`;
}

export function formatBytes(bytes: bigint | number): string {
  const n = Number(bytes);
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

export function timeMs(ts: Timestamp | undefined): number | undefined {
  return ts ? timestampMs(ts) : undefined;
}

export function formatTime(ts: Timestamp | undefined): string {
  const ms = timeMs(ts);
  if (ms === undefined) return "";
  return new Date(ms).toLocaleString();
}

/** Count the UTF-8 bytes of a string (PageDelta.offset counts bytes, not UTF-16 units). */
export function utf8Length(text: string): number {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) bytes += 1;
    else if (c < 0x800) bytes += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        bytes += 4;
        i++;
      } else bytes += 3;
    } else bytes += 3;
  }
  return bytes;
}
