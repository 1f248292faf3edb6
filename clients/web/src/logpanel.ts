// The tools' terminal output: lines are appended as DOM nodes in batches (one batch per
// animation frame); the DOM keeps the newest LOG_CAP lines and says how many it dropped.

import { h, setText } from "./dom";
import type { LogLine } from "./gen/mitosis/v1/task_pb";
import { logSourceLabel } from "./model";

export const LOG_CAP = 5000;

export class LogPanel {
  readonly el: HTMLElement;
  /** Lines received so far (shown or not). */
  total = 0;

  private readonly list: HTMLElement;
  private readonly note: HTMLElement;
  private readonly count: HTMLElement;
  private pending: LogLine[] = [];
  private shown = 0;
  private dropped = 0;

  constructor(private readonly cap: number = LOG_CAP) {
    this.count = h("span", { class: "panel-count" });
    this.note = h("p", { class: "log-note", attrs: { hidden: true } });
    this.list = h("div", {
      class: "log",
      attrs: { role: "log", "aria-label": "Tool output", tabindex: "0" },
    });
    this.el = h(
      "section",
      { class: "panel output", attrs: { "aria-label": "Tool output" } },
      h("div", { class: "panel-bar" }, h("h2", { text: "Tool output" }), this.count),
      this.note,
      this.list,
    );
  }

  add(line: LogLine): void {
    this.pending.push(line);
    this.total += 1;
  }

  /** Append the lines added since the last flush. */
  flush(): void {
    if (this.pending.length === 0) return;
    let batch = this.pending;
    this.pending = [];
    const stick = this.list.scrollHeight - this.list.scrollTop - this.list.clientHeight < 32;
    if (batch.length >= this.cap) {
      // Replaying a long log: build only the lines that will stay.
      this.dropped += this.shown + batch.length - this.cap;
      this.list.replaceChildren();
      this.shown = 0;
      batch = batch.slice(-this.cap);
    }
    const fragment = document.createDocumentFragment();
    for (const line of batch) fragment.append(this.lineElement(line));
    this.list.append(fragment);
    this.shown += batch.length;
    while (this.shown > this.cap && this.list.firstChild) {
      this.list.firstChild.remove();
      this.shown -= 1;
      this.dropped += 1;
    }
    if (this.dropped > 0) {
      this.note.hidden = false;
      setText(
        this.note,
        `${this.dropped.toLocaleString()} earlier lines are not shown; the panel keeps the last ${this.cap.toLocaleString()}.`,
      );
    }
    setText(this.count, `${this.total.toLocaleString()} lines`);
    if (stick) this.list.scrollTop = this.list.scrollHeight;
  }

  private lineElement(line: LogLine): HTMLElement {
    const where = line.stepIndex >= 0 ? `step ${line.stepIndex + 1}` : "task";
    const source = logSourceLabel(line.source);
    return h(
      "div",
      { class: `line ${source}`, attrs: { title: `${where} · ${source}` } },
      h("span", { class: "line-step", text: line.stepIndex >= 0 ? String(line.stepIndex + 1) : "·" }),
      h("span", { class: "line-text", text: line.text }),
    );
  }
}
