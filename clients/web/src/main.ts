// The Mitosis UI: a header with the connection state, the sidebar (new task, earlier
// tasks) and the open task, routed by the URL (`/` and `/tasks/<id>`).

import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { createTaskClient, type TaskClient } from "./api";
import { KeyKeeper, keyInterceptor, type KeyStorage } from "./apikey";
import { h, setText } from "./dom";
import type { Task_State } from "./gen/mitosis/v1/task_pb";
import { Sidebar } from "./sidebar";
import { KeyDialog } from "./keydialog";
import { describeError, eachEvent, TaskStream, type ConnectionState } from "./stream";
import { TaskView, type DebugHook } from "./taskview";

declare global {
  interface Window {
    /** Test hook, present with `?debug=1`. */
    __mitosis?: DebugHook;
    /** Heartbeat watchdog override in seconds (tests); `?watchdog=SECONDS` does the same. */
    __MITOSIS_WATCHDOG_S?: number;
  }
}

/** Heartbeats come every 10 s by default: reconnect after three are missed. */
const DEFAULT_WATCHDOG_S = 30;

interface Config {
  debug: boolean;
  watchdogMs: number;
}

function readConfig(): Config {
  const params = new URLSearchParams(window.location.search);
  const fromQuery = Number(params.get("watchdog"));
  const fromGlobal = Number(window.__MITOSIS_WATCHDOG_S);
  const seconds =
    fromQuery > 0 ? fromQuery : fromGlobal > 0 ? fromGlobal : DEFAULT_WATCHDOG_S;
  return { debug: params.get("debug") === "1", watchdogMs: seconds * 1000 };
}

const TASK_PATH = /^\/tasks\/([^/]+)\/?$/;

/** The tab's sessionStorage, or undefined where the browser refuses it. */
function sessionStore(): KeyStorage | undefined {
  try {
    return window.sessionStorage;
  } catch {
    return undefined;
  }
}

/** sessionStorage: "1" once a stream found that the path holds back streamed responses. */
const PATH_BUFFERS_KEY = "mitosis.path-buffers";

/** The pill in the header: what the live connection is doing right now. */
class ConnectionIndicator {
  readonly el: HTMLElement;
  private readonly label: HTMLElement;
  private readonly detail: HTMLElement;
  private state: ConnectionState = { kind: "idle" };
  private ticker: ReturnType<typeof setInterval> | undefined;
  onChange: ((text: string) => void) | undefined;

  constructor() {
    this.label = h("span", { class: "conn-label" });
    this.detail = h("span", { class: "conn-detail" });
    this.el = h(
      "div",
      { class: "conn", attrs: { role: "status", "aria-live": "polite", "data-state": "idle" } },
      h("span", { class: "conn-dot", attrs: { "aria-hidden": "true" } }),
      this.label,
      this.detail,
    );
    this.draw();
  }

  set(state: ConnectionState): void {
    this.state = state;
    clearInterval(this.ticker);
    this.ticker = undefined;
    if (state.kind === "reconnecting") this.ticker = setInterval(() => this.draw(), 250);
    this.draw();
    this.onChange?.(this.text());
  }

  /** A failed call while no stream is open. */
  error(message: string): void {
    if (this.state.kind === "idle" || this.state.kind === "ended" || this.state.kind === "error") {
      this.set({ kind: "error", message, code: undefined });
    }
  }

  private text(): string {
    const s = this.state;
    switch (s.kind) {
      case "idle":
        return "idle";
      case "connecting":
        return s.attempt > 1 ? `connecting (attempt ${s.attempt})` : "connecting";
      case "live":
        return s.bounded ? "live (bounded calls)" : "live";
      case "reconnecting": {
        const seconds = Math.max(0, Math.ceil((s.at - Date.now()) / 1000));
        return `reconnecting in ${seconds} s (attempt ${s.attempt})`;
      }
      case "offline":
        return "offline";
      case "ended":
        return "up to date (task ended)";
      case "error":
        return "error";
    }
  }

  private draw(): void {
    const s = this.state;
    this.el.setAttribute("data-state", s.kind);
    setText(this.label, this.text());
    let detail = "";
    if (s.kind === "reconnecting") detail = `${s.reason}; retrying`;
    else if (s.kind === "live" && s.bounded) {
      detail = "a proxy on the way holds back streamed responses: asking for news every half second";
    }
    else if (s.kind === "offline") detail = "waiting for the network";
    else if (s.kind === "error") detail = s.message;
    setText(this.detail, detail);
    this.detail.title = detail;
  }
}

class App {
  private readonly keys: KeyKeeper;
  private readonly keyButton: HTMLButtonElement;
  private readonly client: TaskClient;
  private readonly config = readConfig();
  private readonly indicator = new ConnectionIndicator();
  private readonly sidebar: Sidebar;
  private readonly main: HTMLElement;
  private stream: TaskStream | undefined;
  private view: TaskView | undefined;
  private debug: DebugHook | undefined;
  /** Bumped on each navigation so a late answer for an older route is ignored. */
  private route = 0;

  constructor(root: HTMLElement) {
    const dialog = new KeyDialog();
    this.keys = new KeyKeeper(sessionStore(), (reason, rejected) => dialog.ask(reason, rejected));
    this.client = createTaskClient(window.location.origin, [keyInterceptor(this.keys)]);
    this.keyButton = h("button", { class: "key-button", attrs: { type: "button", hidden: true } });
    this.keyButton.addEventListener("click", () => void this.toggleKey());
    this.keys.onChange = () => this.drawKeyButton();
    this.drawKeyButton();
    this.sidebar = new Sidebar({
      client: this.client,
      open: (taskId) => this.navigate(`/tasks/${encodeURIComponent(taskId)}`),
      onError: (message) => this.indicator.error(message),
    });
    this.main = h("main", { class: "content", attrs: { id: "main" } });
    const home = h("a", { class: "brand", text: "Mitosis", attrs: { href: "/" } });
    home.addEventListener("click", (event) => {
      event.preventDefault();
      this.navigate("/");
    });
    root.replaceChildren(
      h(
        "header",
        { class: "top" },
        home,
        h("span", { class: "tagline", text: "an autonomous task agent, live" }),
        h("span", { class: "spacer" }),
        this.indicator.el,
        this.keyButton,
      ),
      h("div", { class: "layout" }, this.sidebar.el, this.main),
      dialog.el,
    );
    this.indicator.onChange = (text) => this.debug?.states.push(text);

    window.addEventListener("popstate", () => this.render());
    // Back online, or the tab shown again after sleep: do not wait for the backoff.
    window.addEventListener("online", () => this.stream?.reconnectNow("back online"));
    window.addEventListener("offline", () => this.stream?.reconnectNow("offline"));
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") this.stream?.reconnectNow("tab visible again");
    });
    window.addEventListener("pageshow", (event) => {
      if (event.persisted) this.stream?.reconnectNow("page restored");
    });

    if (this.config.debug && PerformanceObserver.supportedEntryTypes.includes("longtask")) {
      new PerformanceObserver((list) => {
        for (const entry of list.getEntries()) this.debug?.longTasks.push(entry.duration);
      }).observe({ type: "longtask" });
    }

    void this.sidebar.load(true);
    this.render();
  }

  /** "Forget key" drops the session's key; "Enter key" asks for one. Either way, reload. */
  private async toggleKey(): Promise<void> {
    if (this.keys.current() !== undefined) {
      this.keys.forget();
    } else if ((await this.keys.refused("", undefined)) === undefined) {
      return;
    }
    void this.sidebar.load(true);
    this.render();
  }

  /** The key button shows once the server has wanted a key, or while one is kept. */
  private drawKeyButton(): void {
    const kept = this.keys.current() !== undefined;
    this.keyButton.hidden = !kept && !this.keys.needed;
    setText(this.keyButton, kept ? "Forget key" : "Enter key");
    this.keyButton.title = kept
      ? "Drop the API key kept for this tab; the next call asks again"
      : "Enter the API key this server needs";
  }

  navigate(path: string): void {
    if (window.location.pathname !== path) window.history.pushState(null, "", path);
    this.render();
  }

  private render(): void {
    const match = TASK_PATH.exec(window.location.pathname);
    if (match?.[1]) {
      void this.openTask(decodeURIComponent(match[1]));
    } else if (window.location.pathname === "/" || window.location.pathname === "/index.html") {
      this.close();
      this.sidebar.select(undefined);
      document.title = "Mitosis";
      this.main.replaceChildren(
        h(
          "section",
          { class: "panel welcome" },
          h("h1", { text: "What should the agent do?" }),
          h("p", {
            text:
              "Type a task on the left and run it. You will see the plan, each step as it runs, " +
              "each document opening as a new page in the terminal and filling in as it is " +
              "written, the tools' output and the delivered files — live.",
          }),
          h("p", { text: "Earlier tasks are listed below the form; each opens replayed from its log." }),
        ),
      );
    } else {
      this.close();
      this.main.replaceChildren(
        h(
          "section",
          { class: "panel error-panel", attrs: { role: "alert" } },
          h("h1", { text: "No such page" }),
          h("p", { text: `Nothing lives at ${window.location.pathname}.` }),
        ),
      );
    }
  }

  /** Whether a stream of this tab found that the path to the server holds streams back. */
  private pathBuffers(): boolean {
    return sessionStore()?.getItem(PATH_BUFFERS_KEY) === "1";
  }

  private rememberPathBuffers(): void {
    try {
      sessionStore()?.setItem(PATH_BUFFERS_KEY, "1");
    } catch {
      // Storage refused: the next task's stream finds it out again.
    }
  }

  /** Stop the open task's stream and drop its view. */
  private close(): void {
    this.route += 1;
    this.stream?.stop();
    this.stream = undefined;
    this.view?.destroy();
    this.view = undefined;
    this.indicator.set({ kind: "idle" });
  }

  private async openTask(taskId: string): Promise<void> {
    this.close();
    const route = this.route;
    this.sidebar.select(taskId);
    this.debug = this.config.debug ? newDebugHook(taskId) : undefined;
    if (this.debug) window.__mitosis = this.debug;
    this.main.replaceChildren(h("p", { class: "loading", text: `Loading task ${taskId}…` }));
    this.indicator.set({ kind: "connecting", attempt: 1 });

    let task;
    try {
      task = await this.client.getTask({ taskId });
    } catch (err) {
      if (route !== this.route) return;
      const message = describeError(err);
      this.indicator.set({ kind: "error", message, code: undefined });
      this.main.replaceChildren(
        h(
          "section",
          { class: "panel error-panel", attrs: { role: "alert" } },
          h("h1", { text: "Could not open the task" }),
          h("p", { class: "error-message", text: message }),
          h("p", { class: "task-id", text: `task ${taskId}` }),
        ),
      );
      return;
    }
    if (route !== this.route) return;

    const debug = this.debug;
    const view = new TaskView(task, {
      client: this.client,
      debug,
      onState: (id: string, state: Task_State) => this.sidebar.setState(id, state),
    });
    this.view = view;
    this.sidebar.setState(task.taskId, task.state);
    this.main.replaceChildren(view.el);

    let usedKey: string | undefined;
    const stream = new TaskStream({
      watch: (afterSeq, signal, onHeader, maxWaitMs) => {
        if (debug) debug.connections += 1;
        usedKey = this.keys.current();
        const maxWait = maxWaitMs === undefined ? undefined : durationFromMs(maxWaitMs);
        const request = { taskId, afterSeq, ...(maxWait ? { maxWait } : {}) };
        return eachEvent(this.client.watchTask(request, { signal, onHeader, timeoutMs: 0 }));
      },
      bounded: this.pathBuffers(),
      onBounded: () => this.rememberPathBuffers(),
      answers: () => this.client.getTask({ taskId }).then(
        () => true,
        () => false,
      ),
      onUnauthenticated: async (reason) =>
        (await this.keys.refused(reason, usedKey)) !== undefined,
      onEvent: (event) => view.push(event),
      onState: (state) => {
        if (route === this.route) this.indicator.set(state);
      },
      onDuplicate: () => {
        if (debug) debug.duplicates += 1;
      },
      watchdogMs: this.config.watchdogMs,
      isOnline: () => navigator.onLine,
    });
    this.stream = stream;
    await stream.start();
  }
}

function newDebugHook(taskId: string): DebugHook {
  return {
    taskId,
    seqs: [],
    latencies: [],
    states: [],
    duplicates: 0,
    connections: 0,
    offsetMismatches: 0,
    longTasks: [],
  };
}

const root = document.getElementById("app");
if (root) new App(root);
