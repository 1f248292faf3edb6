// Markdown from the model is untrusted: markdownToHtml escapes any raw HTML in it, then
// DOMPurify keeps only safe HTML (belt and braces), and the result goes into the page as a
// DOM fragment (no innerHTML on the page's own document).

import DOMPurify from "dompurify";
import { markdownToHtml } from "./markdown-html";

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

/** Render Markdown to a sanitised fragment, ready to append. */
export function renderMarkdown(text: string): DocumentFragment {
  return DOMPurify.sanitize(markdownToHtml(text), {
    RETURN_DOM_FRAGMENT: true,
    USE_PROFILES: { html: true },
    FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "option"],
    FORBID_ATTR: ["style"],
  });
}
