import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import type { TaskClient } from "./api";
import { ArtifactSchema } from "./gen/mitosis/v1/task_pb";
import {
  ReadArtifactResponseSchema,
  type ReadArtifactRequest,
  type ReadArtifactResponse,
} from "./gen/mitosis/v1/task_service_pb";
import { MAX_FRUITLESS_RESUMES, receiveArtifact } from "./download";

const FILE = new TextEncoder().encode("# Report\n\n" + "A line of the report.\n".repeat(40));
const CHUNK = 64;
const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", FILE));
const artifact = create(ArtifactSchema, {
  path: "docs/report.md",
  sizeBytes: BigInt(FILE.length),
  sha256: Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join(""),
});

function joined(chunks: Uint8Array[]): string {
  return new TextDecoder().decode(new Uint8Array(chunks.flatMap((chunk) => [...chunk])));
}

/** A ReadArtifact that honours readOffset and breaks each call after `cuts[call]` chunks. */
function breakingClient(cuts: (number | undefined)[]): { client: TaskClient; offsets: number[] } {
  const offsets: number[] = [];
  async function* readArtifact(request: ReadArtifactRequest): AsyncIterable<ReadArtifactResponse> {
    const start = Number(request.readOffset);
    const cut = cuts[offsets.length];
    offsets.push(start);
    let sent = 0;
    for (let at = start; at < FILE.length; at += CHUNK) {
      if (sent === cut) throw new ConnectError("cut", Code.Unavailable);
      yield create(ReadArtifactResponseSchema, {
        offset: BigInt(at),
        data: FILE.slice(at, at + CHUNK),
      });
      sent += 1;
    }
  }
  return { client: { readArtifact } as unknown as TaskClient, offsets };
}

const noPause = () => Promise.resolve();

describe("receiveArtifact", () => {
  it("resumes a broken download from the bytes it has, and checks the SHA-256", async () => {
    const { client, offsets } = breakingClient([3, 0, 2]);
    const chunks = await receiveArtifact(client, "t", artifact, () => {}, undefined, noPause);
    expect(joined(chunks)).toBe(new TextDecoder().decode(FILE));
    expect(offsets).toEqual([0, 3 * CHUNK, 3 * CHUNK, 5 * CHUNK]);
  });

  it("gives up when resuming receives nothing, again and again", async () => {
    const { client, offsets } = breakingClient([2, 0, 0, 0, 0]);
    await expect(
      receiveArtifact(client, "t", artifact, () => {}, undefined, noPause),
    ).rejects.toThrow("cut");
    expect(offsets.length).toBe(1 + MAX_FRUITLESS_RESUMES);
  });

  it("refuses resumed bytes that do not match the SHA-256", async () => {
    const { client } = breakingClient([2]);
    const wrong = create(ArtifactSchema, { ...artifact, sha256: "0".repeat(64) });
    await expect(
      receiveArtifact(client, "t", wrong, () => {}, undefined, noPause),
    ).rejects.toThrow("SHA-256 mismatch");
  });
});
