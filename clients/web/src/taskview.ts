// One task on screen: what was asked, the plan's steps, the terminal's pages, the tools'
// output and the delivered files. Events are queued and applied once per animation frame,
// each part of the DOM touched incrementally.

import { ConnectError } from "@connectrpc/connect";
import type { TaskClient } from "./api";
import { h, setText } from "./dom";
import { downloadArtifact, downloadName } from "./download";
import {
  Task_State,
  type Artifact,
  type PlanRevised,
  type Step,
  type StepStateChanged,
  type Task,
  type TaskEvent,
  type Usage,
} from "./gen/mitosis/v1/task_pb";
import { LogPanel } from "./logpanel";
import {
  formatBytes,
  formatTime,
  isTerminalState,
  modelLabel,
  stateClass,
  stepStateLabel,
  taskStateLabel,
  timeMs,
} from "./model";
import { sourceItem } from "./sources";
import { describeError } from "./stream";
import { Terminal } from "./terminal";

/** What `?debug=1` exposes as `window.__mitosis` for tests. */
export interface DebugHook {
  taskId: string;
  /** The seq of every event applied to the page, in order. */
  seqs: number[];
  /** Per applied event: ms from its create_time to its appearance in the page. */
  latencies: number[];
  /** Every connection state the header showed, in order. */
  states: string[];
  /** Events dropped because their seq was already applied. */
  duplicates: number;
  /** WatchTask calls opened for this task. */
  connections: number;
  /** PageDelta offsets that did not match the page's text. */
  offsetMismatches: number;
  /** Durations (ms) of main-thread tasks over 50 ms while the task was open. */
  longTasks: number[];
}

interface StepRow {
  step: Step;
  el: HTMLLIElement;
  badge: HTMLElement;
  attempt: HTMLElement;
  usage: HTMLElement;
  error: HTMLElement;
  sources: HTMLElement;
}

export interface TaskViewOptions {
  client: TaskClient;
  /** The task's state changed (for the task list). */
  onState: (taskId: string, state: Task_State) => void;
  debug: DebugHook | undefined;
}

export class TaskView {
  readonly el: HTMLElement;
  private queue: TaskEvent[] = [];
  private frame: number | undefined;
  private fallback: ReturnType<typeof setTimeout> | undefined;
  private destroyed = false;
  private readonly downloads = new AbortController();

  private readonly stateBadge: HTMLElement;
  private readonly stateMessage: HTMLElement;
  private readonly model: HTMLElement;
  private readonly planSummary: HTMLElement;
  private readonly tools: HTMLElement;
  private readonly revisions: HTMLElement;
  private readonly actionError: HTMLElement;
  private readonly approveButton: HTMLButtonElement;
  private readonly cancelButton: HTMLButtonElement;
  private readonly stepList: HTMLOListElement;
  private readonly stepsEmpty: HTMLElement;
  private stepRows: StepRow[] = [];
  private readonly fileList: HTMLUListElement;
  private readonly filesEmpty: HTMLElement;
  private readonly fileRows = new Map<string, { li: HTMLLIElement; artifact: Artifact }>();
  private readonly terminal: Terminal;
  private readonly log: LogPanel;

  constructor(
    private readonly task: Task,
    private readonly opts: TaskViewOptions,
  ) {
    this.terminal = new Terminal(() => this.schedule());
    this.log = new LogPanel();

    this.stateBadge = h("span", { class: "badge task-state" });
    this.stateMessage = h("p", { class: "task-message", attrs: { hidden: true } });
    this.model = h("span", { class: "task-model" });
    this.planSummary = h("p", { class: "plan-summary", attrs: { hidden: true } });
    this.tools = h("p", { class: "task-tools", attrs: { hidden: true } });
    this.revisions = h("div", { class: "plan-revisions" });
    this.actionError = h("p", { class: "action-error", attrs: { role: "alert", hidden: true } });
    this.approveButton = h("button", {
      class: "approve",
      text: "Approve plan",
      attrs: { type: "button", hidden: true },
    });
    this.cancelButton = h("button", {
      class: "cancel danger",
      text: "Cancel task",
      attrs: { type: "button", hidden: true },
    });
    this.approveButton.addEventListener("click", () => void this.approve());
    this.cancelButton.addEventListener("click", () => void this.cancel());

    this.stepList = h("ol", { class: "steps" });
    this.stepsEmpty = h("p", { class: "empty", text: "The planner is making the plan…" });
    this.fileList = h("ul", { class: "files" });
    this.filesEmpty = h("p", { class: "empty", text: "No files delivered yet." });

    const created = formatTime(task.createTime);
    this.el = h(
      "div",
      { class: "task-view", attrs: { "data-task-id": task.taskId } },
      h(
        "section",
        { class: "panel task-summary", attrs: { "aria-label": "Task" } },
        h(
          "div",
          { class: "task-meta" },
          this.stateBadge,
          this.model,
          h("span", { class: "task-id", text: `task ${task.taskId}` }),
          created ? h("time", { class: "task-time", text: created }) : null,
          h("span", { class: "spacer" }),
          this.approveButton,
          this.cancelButton,
        ),
        // The task text is untrusted: plain text, never HTML.
        h("pre", { class: "task-text", text: task.text }),
        this.stateMessage,
        this.actionError,
        this.planSummary,
        this.tools,
        this.revisions,
      ),
      h(
        "div",
        { class: "task-grid" },
        h(
          "div",
          { class: "task-side" },
          h(
            "section",
            { class: "panel plan", attrs: { "aria-label": "Plan" } },
            h("div", { class: "panel-bar" }, h("h2", { text: "Plan" })),
            this.stepsEmpty,
            this.stepList,
          ),
          h(
            "section",
            { class: "panel delivered", attrs: { "aria-label": "Files" } },
            h("div", { class: "panel-bar" }, h("h2", { text: "Files" })),
            this.filesEmpty,
            this.fileList,
          ),
        ),
        h("div", { class: "task-main" }, this.terminal.el, this.log.el),
      ),
    );
    this.setModel(task.model);
    this.setTools(task.tools);
    // The record's steps with its state, so "awaiting approval" never shows without the plan
    // it waits on; the events replayed after this draw the same again, in order.
    this.setSteps(task.steps);
    this.showState(task.state, task.error);
  }

  /** Queue an event; it is drawn at the next animation frame. */
  push(event: TaskEvent): void {
    this.queue.push(event);
    this.schedule();
  }

  destroy(): void {
    this.destroyed = true;
    if (this.frame !== undefined) cancelAnimationFrame(this.frame);
    clearTimeout(this.fallback);
    this.downloads.abort();
  }

  private schedule(): void {
    if (this.destroyed || this.frame !== undefined) return;
    this.frame = requestAnimationFrame(() => this.flush());
    // A hidden tab gets no animation frames: draw at a slow pace there instead.
    this.fallback = setTimeout(() => this.flush(), 1000);
  }

  private flush(): void {
    if (this.frame !== undefined) cancelAnimationFrame(this.frame);
    clearTimeout(this.fallback);
    this.frame = undefined;
    if (this.destroyed) return;
    const events = this.queue;
    this.queue = [];
    for (const event of events) this.apply(event);
    this.log.flush();
    const owed = this.terminal.render(performance.now());
    const debug = this.opts.debug;
    if (debug) {
      const now = Date.now();
      for (const event of events) {
        debug.seqs.push(Number(event.seq));
        const created = timeMs(event.createTime);
        if (created !== undefined) debug.latencies.push(now - created);
      }
      debug.offsetMismatches = this.terminal.offsetMismatches;
    }
    if (owed) this.schedule();
  }

  private apply(event: TaskEvent): void {
    const e = event.kind;
    switch (e.case) {
      case "taskStateChanged":
        this.showState(e.value.state, e.value.message);
        this.opts.onState(this.task.taskId, e.value.state);
        break;
      case "planReady":
        this.setModel(e.value.model);
        if (e.value.summary) {
          this.planSummary.hidden = false;
          setText(this.planSummary, e.value.summary);
        }
        this.setTools(e.value.tools);
        this.setSteps(e.value.steps);
        break;
      case "planRevised":
        this.revise(e.value);
        break;
      case "stepStateChanged":
        this.updateStep(e.value);
        break;
      case "pageStarted":
        this.terminal.started(e.value);
        break;
      case "pageDelta":
        this.terminal.delta(e.value);
        break;
      case "pageFinished":
        this.terminal.finished(e.value);
        break;
      case "logLine":
        this.log.add(e.value);
        break;
      case "artifactReady":
        if (e.value.artifact) this.addArtifact(e.value.artifact);
        break;
      case "heartbeat":
      case undefined:
        break;
    }
  }

  private setModel(model: string): void {
    if (model) this.task.model = model;
    setText(this.model, modelLabel(this.task.model));
    this.model.classList.toggle("offline", this.task.model === "offline");
  }

  /** Show the tools the task's steps could use (names from the executor: text only). */
  private setTools(tools: string[]): void {
    if (tools.length === 0) return;
    this.tools.hidden = false;
    setText(this.tools, `Tools: ${tools.join(", ")}`);
  }

  private showState(state: Task_State, message: string): void {
    const label = taskStateLabel(state);
    setText(this.stateBadge, label);
    this.stateBadge.className = `badge task-state state-${stateClass(label)}`;
    this.stateBadge.setAttribute("data-state", stateClass(label));
    this.stateMessage.hidden = !message;
    setText(this.stateMessage, message);
    this.stateMessage.classList.toggle(
      "error",
      state === Task_State.FAILED || state === Task_State.CANCELLED,
    );
    const ended = isTerminalState(state);
    this.cancelButton.hidden = ended || state === Task_State.UNSPECIFIED;
    this.approveButton.hidden = state !== Task_State.AWAITING_APPROVAL;
    document.title = `${label} · ${this.task.text.slice(0, 60)} · Mitosis`;
  }

  private setSteps(steps: Step[]): void {
    this.stepRows = [];
    this.stepList.replaceChildren();
    for (const step of steps) this.appendStep(step);
    this.stepsEmpty.hidden = this.stepRows.length > 0;
  }

  private revise(revision: PlanRevised): void {
    const from = revision.fromStepIndex;
    for (const row of this.stepRows.splice(from)) row.el.remove();
    for (const step of revision.steps) this.appendStep(step);
    this.stepsEmpty.hidden = this.stepRows.length > 0;
    this.revisions.append(
      h("p", {
        class: "plan-revision",
        text: `Plan revision ${revision.revision}, from step ${from + 1}: ${revision.reason}`,
      }),
    );
  }

  private appendStep(step: Step): void {
    const index = this.stepRows.length;
    const badge = h("span", { class: "badge" });
    const attempt = h("span", { class: "step-attempt" });
    const usage = h("span", { class: "step-usage" });
    const error = h("p", { class: "step-error", attrs: { hidden: true } });
    const sources = h("ul", { class: "step-sources", attrs: { hidden: true } });
    const el = h(
      "li",
      { class: "step", attrs: { "data-index": String(index) } },
      h("div", { class: "step-head" }, badge, h("span", { class: "step-title", text: step.title })),
      h(
        "div",
        { class: "step-meta" },
        h("code", { class: "step-tool", text: step.tool }),
        attempt,
        usage,
      ),
      step.rationale ? h("p", { class: "step-rationale", text: step.rationale }) : null,
      error,
      sources,
    );
    const row: StepRow = { step, el, badge, attempt, usage, error, sources };
    this.stepRows.push(row);
    this.stepList.append(el);
    this.drawStep(row);
  }

  private updateStep(change: StepStateChanged): void {
    const row = this.stepRows[change.stepIndex];
    if (!row) return;
    row.step.state = change.state;
    row.step.attempts = change.attempt;
    row.step.error = change.message;
    if (change.usage) row.step.usage = change.usage;
    if (change.sources.length > 0) row.step.sources = change.sources;
    this.drawStep(row);
  }

  private drawStep(row: StepRow): void {
    const label = stepStateLabel(row.step.state);
    setText(row.badge, label);
    row.badge.className = `badge state-${stateClass(label)}`;
    row.el.setAttribute("data-state", stateClass(label));
    setText(row.attempt, row.step.attempts > 0 ? `attempt ${row.step.attempts}` : "");
    setText(row.usage, usageText(row.step.usage));
    row.error.hidden = !row.step.error;
    setText(row.error, row.step.error);
    const sources = row.step.sources;
    if (sources.length !== row.sources.childElementCount) {
      row.sources.replaceChildren(...sources.map(sourceItem));
      row.sources.hidden = sources.length === 0;
    }
  }

  private addArtifact(artifact: Artifact): void {
    const existing = this.fileRows.get(artifact.path);
    const status = h("span", { class: "download-status", attrs: { "aria-live": "polite" } });
    const link = h("a", {
      class: "artifact-link",
      text: artifact.path,
      attrs: { href: "#", "data-path": artifact.path, download: downloadName(artifact.path) },
    });
    const li = h(
      "li",
      { class: "artifact" },
      link,
      h("span", { class: "artifact-size", text: formatBytes(artifact.sizeBytes) }),
      status,
    );
    link.addEventListener("click", (event) => {
      event.preventDefault();
      void this.download(artifact, status);
    });
    if (existing) existing.li.replaceWith(li);
    else this.fileList.append(li);
    this.fileRows.set(artifact.path, { li, artifact });
    this.filesEmpty.hidden = true;
  }

  private async download(artifact: Artifact, status: HTMLElement): Promise<void> {
    status.className = "download-status";
    setText(status, "downloading…");
    const total = Number(artifact.sizeBytes);
    try {
      await downloadArtifact(
        this.opts.client,
        this.task.taskId,
        artifact,
        (received) => {
          if (total > 0) setText(status, `downloading… ${Math.floor((received * 100) / total)}%`);
        },
        this.downloads.signal,
      );
      setText(status, "saved");
    } catch (err) {
      status.className = "download-status error";
      const message =
        err instanceof ConnectError || !(err instanceof Error) ? describeError(err) : err.message;
      setText(status, `download failed: ${message}`);
    }
  }

  private async approve(): Promise<void> {
    await this.act(() => this.opts.client.approvePlan({ taskId: this.task.taskId }));
  }

  private async cancel(): Promise<void> {
    await this.act(() => this.opts.client.cancelTask({ taskId: this.task.taskId }));
  }

  private async act(call: () => Promise<unknown>): Promise<void> {
    this.actionError.hidden = true;
    this.approveButton.disabled = true;
    this.cancelButton.disabled = true;
    try {
      await call(); // the new state arrives on the stream
    } catch (err) {
      this.actionError.hidden = false;
      setText(this.actionError, describeError(err));
    } finally {
      this.approveButton.disabled = false;
      this.cancelButton.disabled = false;
    }
  }
}

function usageText(usage: Usage | undefined): string {
  if (!usage || usage.modelCalls === 0) return "";
  const calls = `${usage.modelCalls} model call${usage.modelCalls === 1 ? "" : "s"}`;
  return `${calls} · ${usage.inputTokens} in / ${usage.outputTokens} out tokens · ${(Number(usage.latencyMs) / 1000).toFixed(1)} s`;
}
