// Building DOM without HTML strings: text always goes in as text nodes.

type Child = Node | string | null | undefined | false;

export interface Props {
  class?: string;
  /** Attributes; `false`/`undefined` leave the attribute out. */
  attrs?: Record<string, string | boolean | undefined>;
  text?: string;
}

/** Create an element; string children become text nodes (never parsed as HTML). */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Props = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (props.class) el.className = props.class;
  for (const [name, value] of Object.entries(props.attrs ?? {})) {
    if (value === undefined || value === false) continue;
    el.setAttribute(name, value === true ? "" : value);
  }
  if (props.text !== undefined) el.textContent = props.text;
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child);
  }
  return el;
}

/** Set an element's text, touching the DOM only when it changes. */
export function setText(el: Element, text: string): void {
  if (el.textContent !== text) el.textContent = text;
}
