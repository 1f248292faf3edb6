import { describe, expect, it } from "vitest";
import { escapeHtml, markdownToHtml } from "./markdown-html";

describe("markdownToHtml", () => {
  it("escapes what HTML would parse", () => {
    expect(escapeHtml(`<img src=x onerror="a()"> & 'b'`)).toBe(
      "&lt;img src=x onerror=&quot;a()&quot;&gt; &amp; &#39;b&#39;",
    );
  });

  it("shows raw HTML in the Markdown as text, and renders the Markdown", () => {
    const html = markdownToHtml(
      '> **Task:** <img src=x onerror="p()"> and <script>p()</script>\n\n<div onclick="p()">x</div>\n',
    );
    expect(html).not.toMatch(/<(img|script|div)/);
    expect(html).toContain("&lt;img src=x onerror=&quot;p()&quot;&gt;");
    expect(html).toContain("&lt;script&gt;p()&lt;/script&gt;");
    expect(html).toContain("<blockquote>");
    expect(html).toContain("<strong>Task:</strong>");
  });

  it("keeps code as code", () => {
    expect(markdownToHtml("`<b>`")).toBe("<p><code>&lt;b&gt;</code></p>\n");
  });
});
