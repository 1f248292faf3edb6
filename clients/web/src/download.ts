// Download a delivered file: ReadArtifact streamed into a Blob (a broken stream resumes
// from the bytes received), checked, then saved with an <a download> click.

import { Code, ConnectError } from "@connectrpc/connect";
import type { TaskClient } from "./api";
import type { Artifact } from "./gen/mitosis/v1/task_pb";
import { backoffDelay } from "./stream";

/** The name the browser saves a file under: the artifact's path ("/" is not allowed). */
export function downloadName(path: string): string {
  return path.replaceAll("/", "_");
}

async function sha256Hex(chunks: Uint8Array[], size: number): Promise<string | undefined> {
  if (!globalThis.crypto?.subtle) return undefined; // not a secure context: size check only
  const all = new Uint8Array(size);
  let at = 0;
  for (const chunk of chunks) {
    all.set(chunk, at);
    at += chunk.length;
  }
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Codes after which a broken read is resumed from the bytes received. */
const RESUMABLE = new Set<Code>([
  Code.Unavailable,
  Code.Internal,
  Code.Unknown,
  Code.DeadlineExceeded,
  Code.ResourceExhausted,
]);

/** How many resumes in a row may receive nothing before the download gives up. */
export const MAX_FRUITLESS_RESUMES = 3;

/**
 * Read a delivered file's bytes, resuming a broken read from the bytes received
 * (ReadArtifact's `readOffset`), and check their size and SHA-256.
 */
export async function receiveArtifact(
  client: TaskClient,
  taskId: string,
  artifact: Artifact,
  onProgress: (received: number) => void,
  signal?: AbortSignal,
  pause: (attempt: number) => Promise<void> = backoff,
): Promise<Uint8Array[]> {
  const chunks: Uint8Array[] = [];
  let received = 0;
  let fruitless = 0;
  for (;;) {
    const before = received;
    try {
      const request = { taskId, path: artifact.path, readOffset: BigInt(received) };
      for await (const response of client.readArtifact(request, signal ? { signal } : {})) {
        if (response.offset !== BigInt(received)) {
          throw new Error(`chunk at offset ${response.offset}, expected ${received}`);
        }
        chunks.push(response.data);
        received += response.data.length;
        onProgress(received);
      }
      break;
    } catch (err) {
      const error = ConnectError.from(err);
      fruitless = received > before ? 1 : fruitless + 1;
      if (signal?.aborted || !RESUMABLE.has(error.code) || fruitless > MAX_FRUITLESS_RESUMES) {
        throw err;
      }
      await pause(fruitless);
    }
  }
  if (BigInt(received) !== artifact.sizeBytes) {
    throw new Error(`received ${received} bytes, the file has ${artifact.sizeBytes}`);
  }
  const digest = await sha256Hex(chunks, received);
  if (digest !== undefined && artifact.sha256 && digest !== artifact.sha256) {
    throw new Error(`SHA-256 mismatch: got ${digest}, expected ${artifact.sha256}`);
  }
  return chunks;
}

function backoff(attempt: number): Promise<void> {
  const ms = backoffDelay(attempt, 250, 4000, Math.random);
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export async function downloadArtifact(
  client: TaskClient,
  taskId: string,
  artifact: Artifact,
  onProgress: (received: number) => void,
  signal?: AbortSignal,
): Promise<void> {
  const chunks = await receiveArtifact(client, taskId, artifact, onProgress, signal);
  const blob = new Blob(chunks as BlobPart[], {
    type: artifact.mediaType || "application/octet-stream",
  });
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = downloadName(artifact.path);
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
