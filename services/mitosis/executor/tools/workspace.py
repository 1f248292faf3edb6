"""A task's workspace: the one folder its tools may read and write."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mimetypes
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

from mitosis.tool_errors import PathEscapeError

HIDDEN_DIR = ".mitosis"
"""The executor's own folder inside a workspace; snapshots and file listings leave it out."""

_MEDIA_TYPES = {".md": "text/markdown", ".json": "application/json"}
_FALLBACK_MEDIA_TYPE = "application/octet-stream"
_HASH_CHUNK = 1 << 16


class FileStamp(NamedTuple):
    """What tells one version of a file from another without reading it."""

    size: int
    mtime_ns: int


@dataclass(frozen=True)
class FileInfo:
    """A workspace file as a task's artifact list shows it."""

    path: str
    size_bytes: int
    sha256: str
    media_type: str


class Workspace:
    """A folder that confines a task's files: every path is checked to stay inside it."""

    def __init__(self, root: Path) -> None:
        # Closed to other users from the start: the python sandbox hands it to a run's uid.
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Compare real paths only, so a symlinked root (e.g. /tmp on macOS) still matches.
        self._root = Path(os.path.realpath(root))

    @property
    def root(self) -> Path:
        """The workspace folder's real path."""
        return self._root

    def resolve(self, rel: str) -> Path:
        """Return the real path `rel` names inside the workspace, or raise PathEscapeError."""
        _check_syntax(rel)
        real = Path(os.path.realpath(self._root / rel))
        if not self._contains(real):
            raise PathEscapeError(rel, "it leads outside the workspace through a symlink")
        if real.is_relative_to(self._root / HIDDEN_DIR):  # as ./.mitosis, or by a symlink
            raise PathEscapeError(rel, f"{HIDDEN_DIR}/ is the executor's own folder")
        return real

    def snapshot(self) -> dict[str, FileStamp]:
        """Return every regular file under the root by relative path; symlinks are skipped."""
        stamps: dict[str, FileStamp] = {}
        pending = [(self._root, "")]
        while pending:
            folder, prefix = pending.pop()
            for entry in _entries(folder):
                rel = prefix + entry.name
                if rel == HIDDEN_DIR or entry.is_symlink() or not _is_utf8(entry.name):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    pending.append((Path(entry.path), rel + "/"))
                elif (stamp := _stamp(entry)) is not None:
                    stamps[rel] = stamp
        return stamps

    def changed_files(self, before: dict[str, FileStamp]) -> list[str]:
        """Return the sorted paths of files that are new or changed since `before`."""
        return sorted(rel for rel, stamp in self.snapshot().items() if before.get(rel) != stamp)

    def describe(self, rel: str) -> FileInfo:
        """Return the size, SHA-256 and media type of the file at `rel`."""
        digest = hashlib.sha256()
        size = 0
        with self.open_for_read(rel) as file:
            while chunk := file.read(_HASH_CHUNK):
                digest.update(chunk)
                size += len(chunk)
        return FileInfo(
            path=rel, size_bytes=size, sha256=digest.hexdigest(), media_type=media_type(rel)
        )

    def open_for_read(self, rel: str) -> BinaryIO:
        """Open the regular file at `rel` for binary reading, refusing anything that escapes.

        The path is checked again after opening, so a symlink swapped in between the check
        and the open cannot lead outside the workspace.
        """
        real = self.resolve(rel)
        try:
            # O_NONBLOCK: opening a FIFO planted by a script must not hang the executor.
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise PathEscapeError(rel, "it became a symlink while being opened") from None
            raise
        try:
            self._check_opened(fd, rel, real)
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def write_hidden(self, name: str, data: bytes) -> Path:
        """Write `data` to a fresh file `name` in the executor's hidden folder; return its path.

        Scripts run in the workspace and may have replaced the folder or the file with a
        symlink or a hard link, so both are recreated rather than written through.
        """
        folder_fd = self._open_hidden_dir()
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=folder_fd)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            with os.fdopen(os.open(name, flags, 0o600, dir_fd=folder_fd), "wb") as file:
                file.write(data)
        finally:
            os.close(folder_fd)
        return self._root / HIDDEN_DIR / name

    def _open_hidden_dir(self) -> int:
        """Return an fd of the hidden folder, replacing anything there that is not a folder."""
        path = self._root / HIDDEN_DIR
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                path.unlink()
        with contextlib.suppress(FileExistsError):
            path.mkdir()
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)

    def _check_opened(self, fd: int, rel: str, real: Path) -> None:
        """Raise unless the open fd is a regular file that really lies inside the workspace."""
        opened = _fd_real_path(fd, real)
        if opened is None or not self._contains(opened):
            raise PathEscapeError(rel, "a folder on the way was swapped for a symlink")
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", rel)
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "is not a regular file", rel)

    def _contains(self, real: Path) -> bool:
        """Tell whether a real path is the root or lies under it."""
        return real.is_relative_to(self._root)


def _is_utf8(name: str) -> bool:
    """Tell whether a file name is UTF-8 (os gives other bytes as lone surrogates)."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def media_type(rel: str) -> str:
    """Return the media type a file name suggests, application/octet-stream if none."""
    suffix = Path(rel).suffix.lower()
    if suffix in _MEDIA_TYPES:
        return _MEDIA_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(rel, strict=True)
    return guessed or _FALLBACK_MEDIA_TYPE


def _check_syntax(rel: str) -> None:
    """Raise PathEscapeError unless `rel` is a plain relative path with '/' separators."""
    if not rel:
        raise PathEscapeError(rel, "it is empty")
    if "\x00" in rel:
        raise PathEscapeError(rel, "it contains a NUL byte")
    if "\\" in rel:
        raise PathEscapeError(rel, "it contains a backslash")
    if rel.startswith("/"):
        raise PathEscapeError(rel, "it is absolute")
    if ".." in rel.split("/"):
        raise PathEscapeError(rel, "it contains a '..' component")
    if rel.split("/")[0] == HIDDEN_DIR:
        raise PathEscapeError(rel, f"{HIDDEN_DIR}/ is the executor's own folder")


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    """Return a folder's entries, none if it vanished or cannot be read meanwhile."""
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []


def _stamp(entry: os.DirEntry[str]) -> FileStamp | None:
    """Return a regular file's stamp, None for other kinds or a file deleted meanwhile."""
    try:
        info = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return FileStamp(size=info.st_size, mtime_ns=info.st_mtime_ns)


def _fd_real_path(fd: int, expected: Path) -> Path | None:
    """Return the real path of an open fd, or None if it is not the file at `expected`."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        pass
    # Without /proc: re-resolve the path and make sure it is still the file we opened.
    real = Path(os.path.realpath(expected))
    try:
        current = os.stat(real)
    except OSError:
        return None
    opened = os.fstat(fd)
    same = (opened.st_dev, opened.st_ino) == (current.st_dev, current.st_ino)
    return real if same else None
