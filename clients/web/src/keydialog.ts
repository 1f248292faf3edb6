// The dialog that asks for the API key: a modal <dialog> with a password field. Every text
// in it, the server's words included, goes in as text (never parsed as HTML).

import { keyProblem } from "./apikey";
import { h, setText } from "./dom";

export class KeyDialog {
  readonly el: HTMLDialogElement;
  private readonly input: HTMLInputElement;
  private readonly message: HTMLElement;
  private readonly detail: HTMLElement;
  private readonly problem: HTMLElement;
  private resolve: ((key: string | undefined) => void) | undefined;

  constructor() {
    this.message = h("p", { class: "key-message", attrs: { id: "api-key-message" } });
    this.detail = h("p", { class: "key-detail" });
    this.problem = h("p", { class: "form-error", attrs: { role: "alert", hidden: true } });
    this.input = h("input", {
      class: "key-input",
      attrs: {
        id: "api-key",
        name: "api-key",
        type: "password",
        autocomplete: "off",
        spellcheck: "false",
        required: true,
        "aria-describedby": "api-key-message",
      },
    });
    const cancel = h("button", { class: "key-cancel", text: "Cancel", attrs: { type: "button" } });
    const submit = h("button", { class: "primary", text: "Use key", attrs: { type: "submit" } });
    const form = h(
      "form",
      { class: "key-form" },
      h("h2", { text: "API key", attrs: { id: "api-key-title" } }),
      this.message,
      this.detail,
      h("label", { class: "form-label", text: "Key", attrs: { for: "api-key" } }),
      this.input,
      this.problem,
      h("p", {
        class: "hint",
        text: "Kept in this tab until you close it; “Forget key” in the header drops it sooner.",
      }),
      h("div", { class: "form-row" }, cancel, submit),
    );
    this.el = h(
      "dialog",
      { class: "key-dialog", attrs: { "aria-labelledby": "api-key-title" } },
      form,
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const key = this.input.value.trim();
      const problem = keyProblem(key);
      if (problem) {
        this.problem.hidden = false;
        setText(this.problem, problem);
        return;
      }
      this.finish(key);
    });
    cancel.addEventListener("click", () => this.finish(undefined));
    // Escape closes a modal dialog: that is a "no" too.
    this.el.addEventListener("cancel", (event) => {
      event.preventDefault();
      this.finish(undefined);
    });
  }

  /** Ask for a key (see AskForKey); the dialog must be in the document. */
  ask(reason: string, rejected: boolean): Promise<string | undefined> {
    this.finish(undefined); // an older question, if any, is answered "no"
    setText(
      this.message,
      rejected
        ? "The server refused that key. Check it and enter it again."
        : "This Mitosis server needs an API key. Its operator makes one with mitosis-keygen.",
    );
    setText(this.detail, reason ? `Server: ${reason}` : "");
    this.problem.hidden = true;
    this.input.value = "";
    this.el.showModal();
    this.input.focus();
    return new Promise((resolve) => {
      this.resolve = resolve;
    });
  }

  private finish(key: string | undefined): void {
    const resolve = this.resolve;
    this.resolve = undefined;
    if (this.el.open) this.el.close();
    this.input.value = "";
    resolve?.(key);
  }
}
