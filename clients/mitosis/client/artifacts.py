"""Writing a task's artifacts to disk: confined to one folder, checked against their SHA-256."""

from __future__ import annotations

import hashlib
import os
import unicodedata
from pathlib import Path, PurePosixPath
from types import TracebackType

from mitosis.client.errors import ArtifactExistsError, IntegrityError, UnsafePathError
from mitosis.v1 import task_pb2


def artifact_destination(out_dir: Path, path: str) -> Path:
    """Return where an artifact's relative "/"-path lands under out_dir, refusing any escape."""
    parts = PurePosixPath(path).parts
    if (
        not path
        or "\\" in path
        or any(unicodedata.category(c) in ("Cc", "Cf") for c in path)  # NUL, ESC, bidi, …
        or PurePosixPath(path).is_absolute()
        or any(part in ("", ".", "..") for part in parts)
        or (parts and ":" in parts[0])  # a Windows drive such as "C:"
    ):
        raise UnsafePathError(
            f"refusing artifact path {path!r}: not a plain relative path of printable names"
        )
    root = out_dir.resolve()
    destination = root.joinpath(*parts).resolve()  # resolve() also follows symlinks out of root
    if not destination.is_relative_to(root) or destination == root:
        raise UnsafePathError(f"refusing artifact path {path!r}: it leaves {out_dir}")
    return destination


def refuse_existing(destinations: list[Path]) -> None:
    """Raise ArtifactExistsError for the first destination that exists already."""
    for destination in destinations:
        if destination.exists() or destination.is_symlink():
            raise ArtifactExistsError(str(destination))


class ArtifactWriter:
    """Writes one artifact to a temporary file, then moves it into place only if it verifies."""

    def __init__(self, destination: Path, artifact: task_pb2.Artifact) -> None:
        self.destination = destination
        self._artifact = artifact
        self._partial = destination.with_name(destination.name + ".part")
        self._hash = hashlib.sha256()
        self._size = 0
        destination.parent.mkdir(parents=True, exist_ok=True)
        self._file = self._partial.open("wb")

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._file.close()
        if exc_type is not None:
            self._partial.unlink(missing_ok=True)

    @property
    def size(self) -> int:
        """How many bytes were written: where a resumed download goes on from."""
        return self._size

    def write(self, data: bytes) -> None:
        """Append a chunk."""
        self._file.write(data)
        self._hash.update(data)
        self._size += len(data)

    def commit(self) -> Path:
        """Check size and SHA-256, then move the file into place; raise IntegrityError if off."""
        self._file.close()
        expected = self._artifact.sha256.lower()
        actual = self._hash.hexdigest()
        if self._size != self._artifact.size_bytes or actual != expected:
            self._partial.unlink(missing_ok=True)
            raise IntegrityError(
                f"{self._artifact.path}: got {self._size} bytes with sha256 {actual}, "
                f"expected {self._artifact.size_bytes} bytes with sha256 {expected or '(none)'}"
            )
        os.replace(self._partial, self.destination)
        return self.destination
