// Markdown to an HTML string, with raw HTML in the Markdown escaped: the model's text is
// shown as the text it is, never parsed as markup. Pure (no DOM), so it runs under vitest.

import { Marked } from "marked";

const ESCAPES: Record<string, string> = {
  "&": "&amp;",
  "<": "&lt;",
  ">": "&gt;",
  '"': "&quot;",
  "'": "&#39;",
};

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ESCAPES[c] ?? c);
}

const marked = new Marked({
  gfm: true,
  breaks: false,
  async: false,
  renderer: {
    // Raw HTML blocks and inline tags: shown as text.
    html: ({ text }) => escapeHtml(text),
  },
});

/** The HTML for a Markdown text; still to be sanitised before it meets the page. */
export function markdownToHtml(text: string): string {
  return marked.parse(text) as string;
}
