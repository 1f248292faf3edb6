"""Workspace: paths stay inside, snapshots see what changed, files are described right."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mitosis.executor.tools.workspace import HIDDEN_DIR, FileStamp, Workspace
from mitosis.tool_errors import PathEscapeError


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "ws")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder next to the workspace, with a file a script must not reach."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_text("secret")
    return folder


def test_creates_the_root(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "a" / "b")
    assert ws.root.is_dir()
    assert ws.root == Path(os.path.realpath(tmp_path / "a" / "b"))


@pytest.mark.parametrize(
    ("rel", "reason"),
    [
        ("../x", "'..'"),
        ("a/../../x", "'..'"),
        ("a/..", "'..'"),
        ("/etc/passwd", "absolute"),
        ("a\\b", "backslash"),
        ("..\\x", "backslash"),
        ("", "empty"),
        ("a\x00b", "NUL"),
        (".mitosis/x.md", "the executor's own folder"),
        (".mitosis", "the executor's own folder"),
        ("./.mitosis/x.md", "the executor's own folder"),
        ("a/../.mitosis/x.md", "'..'"),
    ],
)
def test_resolve_rejects_bad_paths(workspace: Workspace, rel: str, reason: str) -> None:
    with pytest.raises(PathEscapeError, match=reason) as caught:
        workspace.resolve(rel)
    assert caught.value.path == rel
    assert "relative path inside the workspace" in str(caught.value)


def test_resolve_rejects_symlink_to_outside_folder(workspace: Workspace, outside: Path) -> None:
    (workspace.root / "link").symlink_to(outside)
    with pytest.raises(PathEscapeError, match="symlink"):
        workspace.resolve("link/secret.txt")
    with pytest.raises(PathEscapeError, match="symlink"):
        workspace.resolve("link")


def test_resolve_rejects_symlink_to_etc(workspace: Workspace) -> None:
    (workspace.root / "etc").symlink_to("/etc")
    (workspace.root / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(PathEscapeError):
        workspace.resolve("etc/passwd")
    with pytest.raises(PathEscapeError):
        workspace.resolve("passwd")


def test_resolve_accepts_nested_paths(workspace: Workspace) -> None:
    assert workspace.resolve("a/b/c.txt") == workspace.root / "a" / "b" / "c.txt"
    assert workspace.resolve("notes.md") == workspace.root / "notes.md"
    assert workspace.resolve("a/./b") == workspace.root / "a" / "b"


def test_resolve_accepts_symlink_that_stays_inside(workspace: Workspace) -> None:
    (workspace.root / "data").mkdir()
    (workspace.root / "data" / "f.txt").write_text("x")
    (workspace.root / "alias").symlink_to("data")
    assert workspace.resolve("alias/f.txt") == workspace.root / "data" / "f.txt"


def test_snapshot_lists_regular_files_only(workspace: Workspace, outside: Path) -> None:
    root = workspace.root
    (root / "a" / "b").mkdir(parents=True)
    (root / "top.txt").write_text("1")
    (root / "a" / "b" / "deep.csv").write_text("22")
    (root / HIDDEN_DIR).mkdir()
    (root / HIDDEN_DIR / "step.py").write_text("print()")
    (root / "a" / HIDDEN_DIR).mkdir()
    (root / "a" / HIDDEN_DIR / "kept.txt").write_text("only the top hidden folder is skipped")
    (root / "out").symlink_to(outside)
    (root / "file-link").symlink_to(root / "top.txt")
    os.mkfifo(root / "fifo")

    snapshot = workspace.snapshot()

    assert sorted(snapshot) == ["a/.mitosis/kept.txt", "a/b/deep.csv", "top.txt"]
    assert snapshot["a/b/deep.csv"].size == 2
    assert isinstance(snapshot["top.txt"], FileStamp)


def test_changed_files_sees_new_and_changed(workspace: Workspace) -> None:
    root = workspace.root
    (root / "same.txt").write_text("same")
    (root / "edited.txt").write_text("before")
    before = workspace.snapshot()

    (root / "edited.txt").write_text("after, and longer")
    (root / "sub").mkdir()
    (root / "sub" / "new.txt").write_text("new")
    (root / HIDDEN_DIR).mkdir()
    (root / HIDDEN_DIR / "step.py").write_text("ignored")

    assert workspace.changed_files(before) == ["edited.txt", "sub/new.txt"]
    assert workspace.changed_files(workspace.snapshot()) == []


def test_describe(workspace: Workspace) -> None:
    data = b"# Title\n\nSome text.\n"
    (workspace.root / "docs").mkdir()
    (workspace.root / "docs" / "report.md").write_bytes(data)

    info = workspace.describe("docs/report.md")

    assert info.path == "docs/report.md"
    assert info.size_bytes == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.media_type == "text/markdown"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("data.json", "application/json"),
        ("notes.MD", "text/markdown"),
        ("table.csv", "text/csv"),
        ("plot.png", "image/png"),
        ("blob.unknownext", "application/octet-stream"),
        ("no_suffix", "application/octet-stream"),
    ],
)
def test_describe_media_types(workspace: Workspace, name: str, expected: str) -> None:
    (workspace.root / name).write_bytes(b"")
    info = workspace.describe(name)
    assert info.media_type == expected
    assert info.sha256 == hashlib.sha256(b"").hexdigest()


def test_open_for_read_reads_bytes(workspace: Workspace) -> None:
    (workspace.root / "f.bin").write_bytes(b"\x00\x01\xff")
    with workspace.open_for_read("f.bin") as file:
        assert file.read() == b"\x00\x01\xff"


def test_open_for_read_refuses_folders_and_missing_files(workspace: Workspace) -> None:
    (workspace.root / "folder").mkdir()
    with pytest.raises(IsADirectoryError):
        workspace.open_for_read("folder")
    with pytest.raises(FileNotFoundError):
        workspace.open_for_read("missing.txt")


def test_open_for_read_does_not_hang_on_a_fifo(workspace: Workspace) -> None:
    os.mkfifo(workspace.root / "fifo")
    with pytest.raises(OSError, match="not a regular file"):
        workspace.open_for_read("fifo")


def test_open_for_read_refuses_file_swapped_for_symlink(
    workspace: Workspace, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = workspace.root / "f.txt"
    target.write_text("inside")
    checked = workspace.resolve("f.txt")
    # Between the check and the open, the file becomes a symlink to a file outside.
    target.unlink()
    target.symlink_to(outside / "secret.txt")
    monkeypatch.setattr(workspace, "resolve", lambda rel: checked)

    with pytest.raises(PathEscapeError, match="symlink"):
        workspace.open_for_read("f.txt")


@pytest.fixture(params=["proc", "no-proc"])
def fd_paths(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with /proc/self/fd, and again as if there were no /proc."""
    if request.param == "no-proc":
        readlink = os.readlink

        def readlink_without_proc(path: str) -> str:
            if str(path).startswith("/proc/self/fd/"):
                raise FileNotFoundError(path)
            return readlink(path)

        monkeypatch.setattr(os, "readlink", readlink_without_proc)
    return str(request.param)


def test_open_for_read_works_without_proc(workspace: Workspace, fd_paths: str) -> None:
    (workspace.root / "d").mkdir()
    (workspace.root / "d" / "f.txt").write_text("ok")
    with workspace.open_for_read("d/f.txt") as file:
        assert file.read() == b"ok"


def test_open_for_read_refuses_folder_swapped_for_symlink(
    workspace: Workspace, outside: Path, monkeypatch: pytest.MonkeyPatch, fd_paths: str
) -> None:
    folder = workspace.root / "d"
    folder.mkdir()
    (folder / "secret.txt").write_text("inside")
    checked = workspace.resolve("d/secret.txt")
    # Between the check and the open, a folder on the way becomes a symlink to outside.
    folder.rename(workspace.root / "d-old")
    folder.symlink_to(outside)
    monkeypatch.setattr(workspace, "resolve", lambda rel: checked)

    with pytest.raises(PathEscapeError, match="symlink"):
        workspace.open_for_read("d/secret.txt")


def test_write_hidden_replaces_planted_symlinks(workspace: Workspace, outside: Path) -> None:
    # A script may plant a symlink where the executor writes its own files.
    (workspace.root / HIDDEN_DIR).symlink_to(outside)
    path = workspace.write_hidden("secret.txt", b"print('hi')\n")

    assert path == workspace.root / HIDDEN_DIR / "secret.txt"
    assert not (workspace.root / HIDDEN_DIR).is_symlink()
    assert path.read_bytes() == b"print('hi')\n"
    assert (outside / "secret.txt").read_text() == "secret"

    path.unlink()
    path.symlink_to(outside / "secret.txt")
    workspace.write_hidden("secret.txt", b"again\n")
    assert not path.is_symlink()
    assert (outside / "secret.txt").read_text() == "secret"


def test_resolve_rejects_a_symlink_into_the_executors_own_folder(workspace: Workspace) -> None:
    (workspace.root / ".mitosis").mkdir()
    (workspace.root / "inside").symlink_to(workspace.root / ".mitosis")
    with pytest.raises(PathEscapeError, match="the executor's own folder"):
        workspace.resolve("inside/step.py")
