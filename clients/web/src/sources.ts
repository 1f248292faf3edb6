// A step's web sources as links: only http(s) addresses become links, titles are text.

import { h } from "./dom";
import type { WebSource } from "./gen/mitosis/v1/task_pb";

/** Return the URL as the browser parses it when it is http(s), else undefined. */
export function safeHttpUrl(url: string): string | undefined {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return undefined;
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") return undefined;
  return parsed.href;
}

/** One source: a link that opens in a new tab without access to this page, or plain text. */
export function sourceItem(source: WebSource): HTMLLIElement {
  const title = source.title || source.url;
  const href = safeHttpUrl(source.url);
  const label = href
    ? h("a", {
        class: "source-link",
        text: title,
        attrs: { href, target: "_blank", rel: "noopener noreferrer", title: href },
      })
    : h("span", { class: "source-text", text: `${title} (${source.url})` });
  return h(
    "li",
    { class: source.read ? "source read" : "source found" },
    label,
    source.read ? null : h("span", { class: "source-note", text: " (search result)" }),
  );
}
