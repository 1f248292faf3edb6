// The terminal: each document the agent writes opens as a new page. A pager (page tabs,
// previous/next) follows the newest page unless the user turned back to an older one.
// Only the page on screen is rendered, at most once per animation frame.

import { h, setText } from "./dom";
import type { PageDelta, PageFinished, PageStarted } from "./gen/mitosis/v1/task_pb";
import { renderMarkdown } from "./markdown";
import { formatBytes, utf8Length } from "./model";

interface PageState {
  number: number;
  title: string;
  fileName: string;
  stepIndex: number;
  /** The text so far (deltas appended in seq order). */
  text: string;
  /** UTF-8 bytes of `text`, to check each delta's offset. */
  bytes: number;
  finished: boolean;
  abandoned: boolean;
  sizeBytes: bigint;
  sha256: string;
  tab: HTMLButtonElement;
}

export class Terminal {
  readonly el: HTMLElement;
  /** Deltas whose offset did not match the text so far (should stay 0). */
  offsetMismatches = 0;

  private readonly pages = new Map<number, PageState>();
  private readonly order: PageState[] = [];
  private current: PageState | undefined;
  private follow = true;
  private showSource = false;

  private readonly tabs: HTMLElement;
  private readonly prev: HTMLButtonElement;
  private readonly next: HTMLButtonElement;
  private readonly position: HTMLElement;
  private readonly jump: HTMLButtonElement;
  private readonly sourceToggle: HTMLButtonElement;
  private readonly heading: HTMLElement;
  private readonly status: HTMLElement;
  private readonly viewport: HTMLElement;
  private readonly body: HTMLElement;
  private readonly source: HTMLPreElement;
  private readonly empty: HTMLElement;

  // What is on screen, to skip work when nothing changed.
  private renderedPage: number | undefined;
  private renderedLength = 0;
  private renderedSource = false;
  private nextRenderAt = 0;

  /** `requestRender` asks the owner for an animation frame that calls render(). */
  constructor(private readonly requestRender: () => void) {
    this.prev = h("button", { class: "pager-prev", text: "◀ Prev", attrs: { type: "button" } });
    this.next = h("button", { class: "pager-next", text: "Next ▶", attrs: { type: "button" } });
    this.tabs = h("div", { class: "pager-tabs", attrs: { role: "tablist", "aria-label": "Pages" } });
    this.position = h("span", { class: "pager-position" });
    this.jump = h("button", { class: "pager-jump", attrs: { type: "button", hidden: true } });
    this.sourceToggle = h("button", {
      class: "source-toggle",
      text: "Show source",
      attrs: { type: "button", "aria-pressed": "false" },
    });
    this.heading = h("h3", { class: "page-title" });
    this.status = h("span", { class: "page-status" });
    this.body = h("article", { class: "page-body markdown" });
    this.source = h("pre", { class: "page-source", attrs: { hidden: true } });
    this.viewport = h("div", { class: "page-viewport", attrs: { tabindex: "0" } }, this.body, this.source);
    this.empty = h("p", {
      class: "empty",
      text: "No pages yet. Each document the agent writes opens here as a new page.",
    });
    this.el = h(
      "section",
      { class: "panel terminal", attrs: { "aria-label": "Terminal" } },
      h(
        "div",
        { class: "panel-bar" },
        h("h2", { text: "Terminal" }),
        h("nav", { class: "pager", attrs: { "aria-label": "Pager" } }, this.prev, this.tabs, this.next),
        this.position,
        this.jump,
        this.sourceToggle,
      ),
      h("div", { class: "page-head" }, this.heading, this.status),
      this.empty,
      this.viewport,
    );
    this.viewport.hidden = true;
    this.prev.addEventListener("click", () => this.step(-1));
    this.next.addEventListener("click", () => this.step(1));
    this.jump.addEventListener("click", () => {
      const newest = this.order.at(-1);
      if (newest) this.select(newest.number, true);
    });
    this.sourceToggle.addEventListener("click", () => {
      this.showSource = !this.showSource;
      this.sourceToggle.setAttribute("aria-pressed", String(this.showSource));
      setText(this.sourceToggle, this.showSource ? "Show rendered" : "Show source");
      this.requestRender();
    });
    this.updateChrome();
  }

  get pageCount(): number {
    return this.order.length;
  }

  started(event: PageStarted): void {
    const existing = this.pages.get(event.pageNumber);
    if (existing) {
      existing.title = event.title;
      existing.fileName = event.fileName;
      existing.stepIndex = event.stepIndex;
      this.updateChrome();
      return;
    }
    const page = this.add(event.pageNumber, event.title, event.fileName, event.stepIndex);
    if (this.follow || !this.current) this.select(page.number, false);
    else this.updateChrome();
  }

  delta(event: PageDelta): void {
    const page =
      this.pages.get(event.pageNumber) ?? this.add(event.pageNumber, `Page ${event.pageNumber}`, "", -1);
    if (event.offset !== BigInt(page.bytes)) {
      this.offsetMismatches += 1;
      console.warn(`page ${page.number}: delta at byte ${event.offset}, have ${page.bytes}`);
    }
    page.text += event.text;
    page.bytes += utf8Length(event.text);
    if (page === this.current) this.requestRender();
  }

  finished(event: PageFinished): void {
    const page = this.pages.get(event.pageNumber);
    if (!page) return;
    page.finished = !event.abandoned;
    page.abandoned = event.abandoned;
    page.sizeBytes = event.sizeBytes;
    page.sha256 = event.sha256;
    this.updateTab(page);
    if (page === this.current) this.updateChrome();
  }

  /** Show page `number`; a user's choice of an older page stops following the newest. */
  select(number: number, byUser: boolean): void {
    const page = this.pages.get(number);
    if (!page) return;
    const previous = this.current;
    this.current = page;
    if (byUser) this.follow = page === this.order.at(-1);
    if (previous && previous !== page) this.updateTab(previous);
    this.updateTab(page);
    this.updateChrome();
    this.reveal(page.tab);
    this.requestRender();
  }

  /**
   * Draw the current page if its text changed since the last draw. Returns true while a
   * draw is still owed (throttled because the previous one was slow).
   */
  render(now: number): boolean {
    const page = this.current;
    if (!page) return false;
    const samePage = this.renderedPage === page.number && this.renderedSource === this.showSource;
    if (samePage && this.renderedLength === page.text.length) {
      this.updateStatus(page);
      return false;
    }
    const stick = this.atBottom();
    if (this.showSource) {
      // Source view: append only what is new (the text only ever grows).
      if (samePage) this.source.append(page.text.slice(this.renderedLength));
      else this.source.textContent = page.text;
    } else {
      if (now < this.nextRenderAt) return true;
      const start = performance.now();
      this.body.replaceChildren(renderMarkdown(page.text));
      const took = performance.now() - start;
      // A slow render (a long page) waits a few frames before the next one.
      this.nextRenderAt = took > 8 ? now + took * 4 : 0;
    }
    this.body.hidden = this.showSource;
    this.source.hidden = !this.showSource;
    if (!samePage) this.viewport.scrollTop = 0;
    else if (stick) this.viewport.scrollTop = this.viewport.scrollHeight;
    this.renderedPage = page.number;
    this.renderedLength = page.text.length;
    this.renderedSource = this.showSource;
    this.updateStatus(page);
    return false;
  }

  /** Scroll the tab strip (only it, not the page) so that `tab` is visible. */
  private reveal(tab: HTMLElement): void {
    const strip = this.tabs;
    const left = tab.offsetLeft;
    const right = left + tab.offsetWidth;
    if (left < strip.scrollLeft) strip.scrollLeft = left;
    else if (right > strip.scrollLeft + strip.clientWidth) strip.scrollLeft = right - strip.clientWidth;
  }

  private atBottom(): boolean {
    const v = this.viewport;
    return v.scrollHeight - v.scrollTop - v.clientHeight < 32;
  }

  private add(number: number, title: string, fileName: string, stepIndex: number): PageState {
    const tab = h("button", {
      class: "pager-tab writing",
      text: String(number),
      attrs: { type: "button", role: "tab", "aria-selected": "false", "data-page": String(number) },
    });
    tab.addEventListener("click", () => this.select(number, true));
    const page: PageState = {
      number,
      title,
      fileName,
      stepIndex,
      text: "",
      bytes: 0,
      finished: false,
      abandoned: false,
      sizeBytes: 0n,
      sha256: "",
      tab,
    };
    this.updateTab(page);
    this.pages.set(number, page);
    // Pages open in number order; keep the order right even if one arrives late.
    const at = this.order.findIndex((p) => p.number > number);
    if (at === -1) {
      this.order.push(page);
      this.tabs.append(tab);
    } else {
      this.tabs.insertBefore(tab, this.order[at]?.tab ?? null);
      this.order.splice(at, 0, page);
    }
    return page;
  }

  private step(by: number): void {
    if (!this.current) return;
    const index = this.order.indexOf(this.current) + by;
    const page = this.order[index];
    if (page) this.select(page.number, true);
  }

  private updateTab(page: PageState): void {
    const selected = page === this.current;
    page.tab.className = `pager-tab ${page.abandoned ? "abandoned" : page.finished ? "finished" : "writing"}${selected ? " selected" : ""}`;
    page.tab.setAttribute("aria-selected", String(selected));
    page.tab.title = `Page ${page.number} — ${page.title}`;
  }

  private updateChrome(): void {
    const page = this.current;
    const index = page ? this.order.indexOf(page) : -1;
    const newest = this.order.at(-1);
    this.empty.hidden = this.order.length > 0;
    this.viewport.hidden = !page;
    this.prev.disabled = index <= 0;
    this.next.disabled = index === -1 || index >= this.order.length - 1;
    setText(this.position, page ? `Page ${index + 1} of ${this.order.length}` : "");
    this.jump.hidden = !newest || newest === page;
    if (newest && newest !== page) setText(this.jump, `Newest page (${newest.number}) ▶▶`);
    if (page) {
      const file = page.fileName ? ` (${page.fileName})` : "";
      setText(this.heading, `Page ${page.number} — ${page.title}${file}`);
      this.updateStatus(page);
    } else {
      setText(this.heading, "");
      setText(this.status, "");
    }
  }

  private updateStatus(page: PageState): void {
    let status: string;
    if (page.abandoned) status = "abandoned: its step was interrupted";
    else if (page.finished)
      status = `finished · ${formatBytes(page.sizeBytes)} · sha256 ${page.sha256.slice(0, 12)}…`;
    else status = `writing… ${formatBytes(page.bytes)}`;
    setText(this.status, status);
    this.status.className = `page-status ${page.abandoned ? "abandoned" : page.finished ? "finished" : "writing"}`;
  }
}
