// The API key: kept in sessionStorage for the tab's session, sent as `authorization:
// Bearer <key>` on every call, and asked for only when the server says UNAUTHENTICATED
// (a server without keys never makes the UI ask).
//
// Pure of the DOM: the storage and the way to ask the person are injected, so the logic
// runs under vitest as it runs in the browser.

import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";

/** Where the key lives for the session: sessionStorage under this name. */
export const STORAGE_KEY = "mitosis.apiKey";

/** The part of the Web Storage API the keeper uses. */
export interface KeyStorage {
  getItem(name: string): string | null;
  setItem(name: string, value: string): void;
  removeItem(name: string): void;
}

/**
 * Ask the person for a key. `reason` says why (the server's words), `rejected` whether a
 * key was sent and refused. Resolves with the key, or undefined if they decline.
 */
export type AskForKey = (reason: string, rejected: boolean) => Promise<string | undefined>;

/** Why a typed key cannot be used, or undefined if it can. */
export function keyProblem(key: string): string | undefined {
  if (!key) return "Enter the key first.";
  // A header value carries visible ASCII only; fetch would refuse anything else.
  if (!/^[\x21-\x7e]+$/.test(key)) return "A key is printable ASCII without spaces.";
  return undefined;
}

/** The session's key, and the one place that asks for a new one. */
export class KeyKeeper {
  /** Used when storage refuses (disabled, or full): the key lasts as long as the page. */
  private memory: string | undefined;
  private asking: Promise<string | undefined> | undefined;
  /** Told whenever the key is set or forgotten, and when the server first wants one. */
  onChange: (() => void) | undefined;
  /** True once the server has asked for a key in this page's life. */
  needed = false;

  constructor(
    private readonly storage: KeyStorage | undefined,
    private readonly ask: AskForKey,
  ) {}

  /** The key to send, if any. */
  current(): string | undefined {
    try {
      const stored = this.storage?.getItem(STORAGE_KEY);
      if (stored) return stored;
    } catch {
      // Storage not available: the memory copy below.
    }
    return this.memory;
  }

  /** Keep a key for the session. */
  set(key: string): void {
    this.memory = key;
    try {
      this.storage?.setItem(STORAGE_KEY, key);
    } catch {
      // Keep it in memory only.
    }
    this.onChange?.();
  }

  /** Drop the key; the next call that needs one asks again. */
  forget(): void {
    this.memory = undefined;
    try {
      this.storage?.removeItem(STORAGE_KEY);
    } catch {
      // Nothing stored.
    }
    this.onChange?.();
  }

  /**
   * A call sent with `used` (undefined: none) was refused with `reason`. Resolves with the
   * key to try next: one already set meanwhile by another call's prompt, else a new one
   * asked for (one question at a time, however many calls failed); undefined if the person
   * declined.
   */
  async refused(reason: string, used: string | undefined): Promise<string | undefined> {
    if (!this.needed) {
      this.needed = true;
      this.onChange?.();
    }
    const now = this.current();
    if (now !== undefined && now !== used) return now;
    if (!this.asking) {
      this.asking = this.ask(reason, used !== undefined).finally(() => {
        this.asking = undefined;
      });
    }
    const key = await this.asking;
    if (key !== undefined && key !== this.current()) this.set(key);
    // Declined after a refusal: a refused key is of no use to later calls.
    else if (key === undefined && used !== undefined && this.current() === used) this.forget();
    return key;
  }
}

/** True for the status a missing or unknown key gets. */
export function isUnauthenticated(err: unknown): boolean {
  return ConnectError.from(err).code === Code.Unauthenticated;
}

/**
 * A connect interceptor: the session's key on every call, and for unary calls, a refused
 * key asked for again and the call retried (the server ran nothing). Streams are not
 * retried here (their request cannot be sent twice); their owners call `keys.refused`.
 */
export function keyInterceptor(keys: KeyKeeper): Interceptor {
  return (next) => async (req) => {
    for (;;) {
      const key = keys.current();
      if (key !== undefined) req.header.set("authorization", `Bearer ${key}`);
      else req.header.delete("authorization");
      try {
        return await next(req);
      } catch (err) {
        if (req.stream || !isUnauthenticated(err)) throw err;
        const nextKey = await keys.refused(ConnectError.from(err).rawMessage, key);
        if (nextKey === undefined) throw err;
      }
    }
  };
}
