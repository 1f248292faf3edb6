import { describe, expect, it } from "vitest";
import { safeHttpUrl } from "./sources";

describe("safeHttpUrl", () => {
  it("keeps http and https addresses, as the browser parses them", () => {
    expect(safeHttpUrl("https://example.com/a?b=1")).toBe("https://example.com/a?b=1");
    expect(safeHttpUrl("http://example.com")).toBe("http://example.com/");
  });

  it("refuses every other scheme and what is not a URL", () => {
    expect(safeHttpUrl("javascript:alert(1)")).toBeUndefined();
    expect(safeHttpUrl(" JavaScript:alert(1)")).toBeUndefined();
    expect(safeHttpUrl("data:text/html,<b>x</b>")).toBeUndefined();
    expect(safeHttpUrl("file:///etc/passwd")).toBeUndefined();
    expect(safeHttpUrl("not a url")).toBeUndefined();
  });
});
