// Download a delivered file: ReadArtifact streamed into a Blob, checked, then saved with
// an <a download> click.

import type { TaskClient } from "./api";
import type { Artifact } from "./gen/mitosis/v1/task_pb";

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

export async function downloadArtifact(
  client: TaskClient,
  taskId: string,
  artifact: Artifact,
  onProgress: (received: number) => void,
  signal?: AbortSignal,
): Promise<void> {
  const chunks: Uint8Array[] = [];
  let received = 0;
  const stream = client.readArtifact({ taskId, path: artifact.path }, signal ? { signal } : {});
  for await (const response of stream) {
    if (response.offset !== BigInt(received)) {
      throw new Error(`chunk at offset ${response.offset}, expected ${received}`);
    }
    chunks.push(response.data);
    received += response.data.length;
    onProgress(received);
  }
  if (BigInt(received) !== artifact.sizeBytes) {
    throw new Error(`received ${received} bytes, the file has ${artifact.sizeBytes}`);
  }
  const digest = await sha256Hex(chunks, received);
  if (digest !== undefined && artifact.sha256 && digest !== artifact.sha256) {
    throw new Error(`SHA-256 mismatch: got ${digest}, expected ${artifact.sha256}`);
  }
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
