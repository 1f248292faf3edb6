// The sidebar: a form to submit a task, and the list of earlier tasks (newest first).

import type { TaskClient } from "./api";
import { h, setText } from "./dom";
import { Task_View, type Task, type Task_State } from "./gen/mitosis/v1/task_pb";
import { formatTime, stateClass, taskStateLabel } from "./model";
import { describeError } from "./stream";

const PAGE_SIZE = 20;

export interface SidebarOptions {
  client: TaskClient;
  /** Open a task (the router pushes /tasks/<id>). */
  open: (taskId: string) => void;
  /** Report an RPC failure (for the header when no stream is open). */
  onError: (message: string) => void;
}

interface Row {
  li: HTMLLIElement;
  link: HTMLAnchorElement;
  badge: HTMLElement;
}

export class Sidebar {
  readonly el: HTMLElement;
  private readonly textarea: HTMLTextAreaElement;
  private readonly approval: HTMLInputElement;
  private readonly submit: HTMLButtonElement;
  private readonly formError: HTMLElement;
  private readonly list: HTMLUListElement;
  private readonly listStatus: HTMLElement;
  private readonly more: HTMLButtonElement;
  private readonly rows = new Map<string, Row>();
  private nextPageToken = "";
  private selected: string | undefined;
  private loading = false;
  /** The submit that failed, so that submitting it again retries it with its request id. */
  private unanswered: { text: string; approval: boolean; requestId: string } | undefined;

  constructor(private readonly opts: SidebarOptions) {
    this.textarea = h("textarea", {
      class: "task-input",
      attrs: {
        id: "task-text",
        name: "text",
        rows: "5",
        required: true,
        placeholder: "Write a short market brief on home solar batteries",
      },
    });
    this.approval = h("input", { attrs: { type: "checkbox", name: "approval" } });
    this.submit = h("button", { class: "primary", text: "Run task", attrs: { type: "submit" } });
    this.formError = h("p", { class: "form-error", attrs: { role: "alert", hidden: true } });
    const form = h(
      "form",
      { class: "new-task", attrs: { "aria-label": "New task" } },
      h("label", { class: "form-label", text: "New task", attrs: { for: "task-text" } }),
      this.textarea,
      h(
        "div",
        { class: "form-row" },
        h("label", { class: "check" }, this.approval, " let me approve the plan first"),
        this.submit,
      ),
      h("p", { class: "hint", text: "Ctrl+Enter runs it." }),
      this.formError,
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.create();
    });
    this.textarea.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        form.requestSubmit();
      }
    });

    this.list = h("ul", { class: "task-list" });
    this.listStatus = h("p", { class: "list-status" });
    this.more = h("button", {
      class: "more",
      text: "More",
      attrs: { type: "button", hidden: true },
    });
    this.more.addEventListener("click", () => void this.load(false));
    const refresh = h("button", {
      class: "refresh",
      text: "↻",
      attrs: { type: "button", title: "Refresh the list", "aria-label": "Refresh the list" },
    });
    refresh.addEventListener("click", () => void this.load(true));

    this.el = h(
      "aside",
      { class: "sidebar" },
      form,
      h(
        "section",
        { class: "earlier", attrs: { "aria-label": "Tasks" } },
        h("div", { class: "panel-bar" }, h("h2", { text: "Tasks" }), refresh),
        this.list,
        this.listStatus,
        this.more,
      ),
    );
  }

  /** Load the first page of tasks (again), or the next page. */
  async load(first: boolean): Promise<void> {
    if (this.loading) return;
    this.loading = true;
    setText(this.listStatus, "loading…");
    this.more.disabled = true;
    try {
      const response = await this.opts.client.listTasks({
        pageSize: PAGE_SIZE,
        pageToken: first ? "" : this.nextPageToken,
        view: Task_View.BASIC, // the list shows the text, state and time only
      });
      if (first) {
        this.list.replaceChildren();
        this.rows.clear();
      }
      for (const task of response.tasks) this.upsert(task, false);
      this.nextPageToken = response.nextPageToken;
      this.more.hidden = !this.nextPageToken;
      setText(this.listStatus, this.rows.size === 0 ? "No tasks yet." : "");
    } catch (err) {
      const message = describeError(err);
      setText(this.listStatus, `Could not list tasks: ${message}`);
      this.opts.onError(message);
    } finally {
      this.loading = false;
      this.more.disabled = false;
    }
  }

  /** Mark the open task in the list. */
  select(taskId: string | undefined): void {
    if (this.selected) this.rows.get(this.selected)?.li.classList.remove("selected");
    this.selected = taskId;
    if (taskId) this.rows.get(taskId)?.li.classList.add("selected");
  }

  /** A task changed state (from the open task's stream). */
  setState(taskId: string, state: Task_State): void {
    const row = this.rows.get(taskId);
    if (row) this.drawBadge(row, state);
  }

  /** Add a task at the top (new) or the bottom (a page of the list), or update it. */
  upsert(task: Task, top: boolean): void {
    const existing = this.rows.get(task.taskId);
    if (existing) {
      this.drawBadge(existing, task.state);
      return;
    }
    const badge = h("span", { class: "badge" });
    const link = h(
      "a",
      { class: "task-link", attrs: { href: `/tasks/${encodeURIComponent(task.taskId)}` } },
      badge,
      h("span", { class: "task-link-text", text: firstLine(task.text) }),
      h("time", { class: "task-link-time", text: formatTime(task.createTime) }),
    );
    link.addEventListener("click", (event) => {
      if (event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) return;
      event.preventDefault();
      this.opts.open(task.taskId);
    });
    const li = h("li", { attrs: { "data-task-id": task.taskId } }, link);
    const row = { li, link, badge };
    this.drawBadge(row, task.state);
    this.rows.set(task.taskId, row);
    if (top) this.list.prepend(li);
    else this.list.append(li);
    if (task.taskId === this.selected) li.classList.add("selected");
    setText(this.listStatus, "");
  }

  private drawBadge(row: Row, state: Task_State): void {
    const label = taskStateLabel(state);
    setText(row.badge, label);
    row.badge.className = `badge state-${stateClass(label)}`;
  }

  private async create(): Promise<void> {
    const text = this.textarea.value;
    if (!text.trim()) {
      this.showFormError("Say what the task is first.");
      return;
    }
    this.formError.hidden = true;
    this.submit.disabled = true;
    setText(this.submit, "Submitting…");
    const approval = this.approval.checked;
    // The same words submitted again after a failure keep their request id: if the first
    // call did create the task (only its answer was lost), the server returns that task.
    const retry = this.unanswered;
    const requestId =
      retry && retry.text === text && retry.approval === approval ? retry.requestId : newUuid();
    this.unanswered = { text, approval, requestId };
    try {
      const task = await this.opts.client.createTask({
        text,
        requireApproval: approval,
        requestId,
      });
      this.unanswered = undefined;
      this.textarea.value = "";
      this.upsert(task, true);
      this.opts.open(task.taskId);
    } catch (err) {
      this.showFormError(`Could not create the task: ${describeError(err)}`);
    } finally {
      this.submit.disabled = false;
      setText(this.submit, "Run task");
    }
  }

  private showFormError(message: string): void {
    this.formError.hidden = false;
    setText(this.formError, message);
  }
}

/** A random (version 4) UUID; crypto.randomUUID exists only in secure contexts. */
function newUuid(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = ((bytes[6] ?? 0) & 0x0f) | 0x40;
  bytes[8] = ((bytes[8] ?? 0) & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  const parts = [hex.slice(0, 8), hex.slice(8, 12), hex.slice(12, 16), hex.slice(16, 20)];
  return [...parts, hex.slice(20)].join("-");
}

function firstLine(text: string): string {
  const line = text.trim().split("\n", 1)[0] ?? "";
  return line.length > 120 ? `${line.slice(0, 119)}…` : line;
}
