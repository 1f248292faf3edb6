import { Code, ConnectError, type UnaryRequest, type UnaryResponse } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { KeyKeeper, keyInterceptor, keyProblem, STORAGE_KEY, type KeyStorage } from "./apikey";

/** sessionStorage as the browser keeps it: a map of strings. */
class MemoryStorage implements KeyStorage {
  readonly items = new Map<string, string>();
  getItem(name: string): string | null {
    return this.items.get(name) ?? null;
  }
  setItem(name: string, value: string): void {
    this.items.set(name, value);
  }
  removeItem(name: string): void {
    this.items.delete(name);
  }
}

/** Storage the browser refuses (disabled cookies and site data). */
const refusingStorage: KeyStorage = {
  getItem: () => {
    throw new Error("SecurityError");
  },
  setItem: () => {
    throw new Error("SecurityError");
  },
  removeItem: () => {
    throw new Error("SecurityError");
  },
};

/** A person at the dialog: answers with the next scripted key; records each question. */
function person(answers: (string | undefined)[]) {
  const questions: { reason: string; rejected: boolean }[] = [];
  const ask = (reason: string, rejected: boolean) => {
    questions.push({ reason, rejected });
    return Promise.resolve(answers.shift());
  };
  return { ask, questions };
}

/**
 * A server behind the interceptor: `accepts` the keys it knows (none: it needs no key);
 * records the authorization header of each call it sees.
 */
function server(accepts: string[] | "no keys") {
  const seen: (string | null)[] = [];
  const next = async (req: UnaryRequest): Promise<UnaryResponse> => {
    const header = req.header.get("authorization");
    seen.push(header);
    if (accepts !== "no keys") {
      if (header === null) {
        throw new ConnectError("this service needs an API key", Code.Unauthenticated);
      }
      if (!accepts.some((key) => header === `Bearer ${key}`)) {
        throw new ConnectError("unknown API key", Code.Unauthenticated);
      }
    }
    return { stream: false, message: { ok: true } } as unknown as UnaryResponse;
  };
  return { next, seen };
}

function unaryRequest(): UnaryRequest {
  return { stream: false, header: new Headers(), message: {} } as unknown as UnaryRequest;
}

function call(keys: KeyKeeper, next: (req: UnaryRequest) => Promise<UnaryResponse>) {
  const intercepted = keyInterceptor(keys)(next as never) as unknown as (
    req: UnaryRequest,
  ) => Promise<UnaryResponse>;
  return intercepted(unaryRequest());
}

describe("keyInterceptor", () => {
  it("never asks a server that needs no key, and sends none", async () => {
    const { ask, questions } = person([]);
    const keys = new KeyKeeper(new MemoryStorage(), ask);
    const { next, seen } = server("no keys");
    await call(keys, next);
    await call(keys, next);
    expect(seen).toEqual([null, null]);
    expect(questions).toEqual([]);
    expect(keys.needed).toBe(false);
  });

  it("asks once when the server wants a key, keeps it for the session and sends it", async () => {
    const storage = new MemoryStorage();
    const { ask, questions } = person(["right"]);
    const keys = new KeyKeeper(storage, ask);
    const { next, seen } = server(["right"]);
    await call(keys, next);
    await call(keys, next);
    expect(seen).toEqual([null, "Bearer right", "Bearer right"]);
    expect(questions).toEqual([{ reason: "this service needs an API key", rejected: false }]);
    expect(storage.items.get(STORAGE_KEY)).toBe("right");
    expect(keys.needed).toBe(true);
  });

  it("a wrong key is refused, asked again with the server's words, then the call succeeds", async () => {
    const { ask, questions } = person(["wrong", "right"]);
    const keys = new KeyKeeper(new MemoryStorage(), ask);
    const { next, seen } = server(["right"]);
    await call(keys, next);
    expect(seen).toEqual([null, "Bearer wrong", "Bearer right"]);
    expect(questions.map((q) => q.rejected)).toEqual([false, true]);
    expect(questions[1]?.reason).toBe("unknown API key");
    expect(keys.current()).toBe("right");
  });

  it("declining fails the call with UNAUTHENTICATED and drops a refused key", async () => {
    const storage = new MemoryStorage();
    storage.setItem(STORAGE_KEY, "revoked");
    const { ask } = person([undefined]);
    const keys = new KeyKeeper(storage, ask);
    const { next } = server(["right"]);
    const failure = await call(keys, next).catch((err: unknown) => ConnectError.from(err));
    expect(failure).toBeInstanceOf(ConnectError);
    expect((failure as ConnectError).code).toBe(Code.Unauthenticated);
    expect(keys.current()).toBeUndefined();
    expect(storage.items.has(STORAGE_KEY)).toBe(false);
  });

  it("calls refused at once share one question", async () => {
    let release: (key: string | undefined) => void = () => {};
    let asked = 0;
    const keys = new KeyKeeper(new MemoryStorage(), () => {
      asked += 1;
      return new Promise((resolve) => {
        release = resolve;
      });
    });
    const { next, seen } = server(["right"]);
    const calls = Promise.all([call(keys, next), call(keys, next), call(keys, next)]);
    await new Promise((resolve) => setTimeout(resolve, 0));
    release("right");
    await calls;
    expect(asked).toBe(1);
    expect(seen.filter((h) => h === "Bearer right")).toHaveLength(3);
  });

  it("a key set meanwhile is tried without asking", async () => {
    const { ask, questions } = person([]);
    const keys = new KeyKeeper(new MemoryStorage(), ask);
    const { seen } = server(["right"]);
    let first = true;
    const next = async (req: UnaryRequest): Promise<UnaryResponse> => {
      seen.push(req.header.get("authorization"));
      if (first) {
        first = false;
        keys.set("right"); // another call's question was answered meanwhile
        throw new ConnectError("this service needs an API key", Code.Unauthenticated);
      }
      return { stream: false } as unknown as UnaryResponse;
    };
    await call(keys, next);
    expect(seen).toEqual([null, "Bearer right"]);
    expect(questions).toEqual([]);
  });

  it("other errors pass through without a question", async () => {
    const { ask, questions } = person(["x"]);
    const keys = new KeyKeeper(new MemoryStorage(), ask);
    const next = async (): Promise<UnaryResponse> => {
      throw new ConnectError("no task", Code.NotFound);
    };
    await expect(call(keys, next)).rejects.toThrow("no task");
    expect(questions).toEqual([]);
  });

  it("streams get the key but are not retried here", async () => {
    const { ask, questions } = person(["x"]);
    const keys = new KeyKeeper(new MemoryStorage(), ask);
    keys.set("kept");
    const headers: (string | null)[] = [];
    const next = async (req: UnaryRequest): Promise<UnaryResponse> => {
      headers.push(req.header.get("authorization"));
      throw new ConnectError("unknown API key", Code.Unauthenticated);
    };
    const intercepted = keyInterceptor(keys)(next as never) as unknown as (
      req: unknown,
    ) => Promise<unknown>;
    const request = { stream: true, header: new Headers(), message: {} };
    await expect(intercepted(request)).rejects.toThrow("unknown API key");
    expect(headers).toEqual(["Bearer kept"]);
    expect(questions).toEqual([]);
  });
});

describe("KeyKeeper", () => {
  it("forgets the key: storage cleared, the next refused call asks again", async () => {
    const storage = new MemoryStorage();
    const changes: string[] = [];
    const { ask, questions } = person(["again"]);
    const keys = new KeyKeeper(storage, ask);
    keys.onChange = () => changes.push(keys.current() ?? "(none)");
    keys.set("first");
    keys.forget();
    expect(storage.items.size).toBe(0);
    expect(await keys.refused("this service needs an API key", undefined)).toBe("again");
    expect(questions).toHaveLength(1);
    expect(changes).toEqual(["first", "(none)", "(none)", "again"]);
  });

  it("keeps the key in memory when the browser refuses storage", () => {
    const keys = new KeyKeeper(refusingStorage, person([]).ask);
    expect(keys.current()).toBeUndefined();
    keys.set("k");
    expect(keys.current()).toBe("k");
    keys.forget();
    expect(keys.current()).toBeUndefined();
  });

  it("reads a key kept by an earlier page of the same session", () => {
    const storage = new MemoryStorage();
    storage.setItem(STORAGE_KEY, "from-before");
    expect(new KeyKeeper(storage, person([]).ask).current()).toBe("from-before");
  });
});

describe("keyProblem", () => {
  it("accepts what a header can carry and says why otherwise", () => {
    expect(keyProblem("mk_live_abc-DEF.123~")).toBeUndefined();
    expect(keyProblem("")).toBe("Enter the key first.");
    for (const bad of ["two words", "line\nbreak", "clé", "tab\there"]) {
      expect(keyProblem(bad)).toBe("A key is printable ASCII without spaces.");
    }
  });
});
