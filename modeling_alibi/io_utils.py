"""Atomic, crash-safe file output shared by training and export: write a temporary sibling, fsync, rename.

A kill at any moment leaves either the old file/folder or the new one, never half of one. Staging names are
`.NAME.tmp-<pid>-<random>`, so `cleanup_staging` can remove what a killed writer left without touching a live
writer's staging. A full disk raises `DiskFullError` (a `UserError`) saying so. `lock_directory` keeps two
processes from writing one folder at once.

    atomic_write_text(path, text)            atomic_write_bytes(path, data)
    with atomic_directory(folder) as tmp:     # write into tmp; it becomes `folder` on a clean exit
        model.save_pretrained(tmp)
    with lock_directory(folder): ...          # raises DirectoryLockedError if a live process holds it
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the lock falls back to the PID check alone
    fcntl = None

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike
LOCK_NAME = ".lock"
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFullError(UserError, OSError):
    """No space left (or quota exceeded) while writing; nothing was put in place. `errno` is ENOSPC or EDQUOT."""

    def __str__(self) -> str:  # the one-line message, not OSError's "[Errno 28] ..."
        return str(self.args[0]) if self.args else ""


class DirectoryLockedError(UserError):
    """Another live process holds the folder's lock file."""


def staging_path(path: PathLike, kind: str = "tmp") -> Path:
    """A fresh hidden sibling of `path`: `.NAME.<kind>-<pid>-<random>` in the same folder (same filesystem)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def disk_full_guard(path: PathLike) -> Iterator[None]:
    """Turn ENOSPC/EDQUOT raised inside the block into a `DiskFullError` naming `path`."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as error:
        if error.errno not in _DISK_FULL:
            raise
        full = DiskFullError(f"The disk is full: no space left while writing {path}. Free some space (or write to "
                             "another disk) and run again.")
        full.errno, full.filename = error.errno, str(path)
        raise full from error


def fsync_directory(path: PathLike) -> None:
    """fsync a folder, so the renames inside it survive a power cut (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically: a temporary sibling, fsync, then `os.replace` over `path`.

    Readers see the old content or the new one, never a truncated file. The temporary file is removed when the
    write fails; a full disk raises `DiskFullError`. Returns `path`.
    """
    path = Path(path)
    tmp = staging_path(path)
    with disk_full_guard(path):
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    fsync_directory(path.parent)
    return path


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """`atomic_write_bytes` of `text` encoded (UTF-8 by default). Returns `path`."""
    return atomic_write_bytes(path, text.encode(encoding))


def fsync_tree(path: PathLike) -> None:
    """fsync every file and folder under `path` (and `path` itself)."""
    for root, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(root)


@contextlib.contextmanager
def atomic_directory(path: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging folder `.NAME.tmp-<pid>-<random>` beside `path`; on a clean exit it becomes `path`.

    Everything in the staging folder is fsynced, then renamed to `path`. With `overwrite=True` an existing `path`
    is first renamed aside (`.NAME.old-...`), the new folder renamed in, and only then the old one removed, so a
    kill at any moment leaves the old folder or the new one in place. Without it, an existing `path` raises
    `FileExistsError` and nothing changes. On an exception the staging folder is removed and `path` is untouched.
    A full disk raises `DiskFullError`.
    """
    path = Path(path)
    tmp = staging_path(path)
    tmp.mkdir(parents=True)
    try:
        with disk_full_guard(path):
            yield tmp
            publish_directory(tmp, path, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_directory(tmp: PathLike, path: PathLike, overwrite: bool = False) -> None:
    """fsync the finished staging folder `tmp` and rename it to `path` (what `atomic_directory` does on exit).

    For writers that fill a staging folder from several processes (`staging_path` gives its name). With
    `overwrite=True` an existing `path` is renamed aside first and removed only after the new one is in place.
    """
    tmp, path = Path(tmp), Path(path)
    fsync_tree(tmp)
    if not path.exists():
        os.rename(tmp, path)  # fails rather than merging if another writer got there first
        fsync_directory(path.parent)
        return
    if not overwrite:
        raise FileExistsError(errno.EEXIST, f"{path} already exists; pass overwrite=True to replace it", str(path))
    old = staging_path(path, "old")
    os.rename(path, old)
    os.rename(tmp, path)
    fsync_directory(path.parent)
    shutil.rmtree(old)


def cleanup_staging(parent: PathLike) -> list[Path]:
    """Remove the `.NAME.tmp-<pid>-*` / `.NAME.old-<pid>-*` entries in `parent` whose writer is no longer alive.

    What a killed `atomic_write_*` or `atomic_directory` left behind; a live writer's staging is kept. An `.old-`
    entry whose `NAME` is missing (a kill between an overwrite's two renames) is renamed back to `NAME` instead.
    Returns the removed paths.
    """
    removed = []
    parent = Path(parent)
    if not parent.is_dir():
        return removed
    for entry in parent.iterdir():
        pid = _staging_pid(entry.name)
        if pid is None or pid_alive(pid):
            continue
        original = parent / entry.name[1:].rpartition(".old-")[0]
        if ".old-" in entry.name and not original.exists():  # killed between the two renames of an overwrite
            os.rename(entry, original)
            logger.warning("Restored %s from %s, left by an interrupted overwrite", original, entry)
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        logger.warning("Removed %s, left by an interrupted write (process %d is gone)", entry, pid)
        removed.append(entry)
    return removed


def _staging_pid(name: str) -> int | None:
    """The writer's PID in a staging name `.NAME.tmp-<pid>-<hex>` (or `.old-`), else None."""
    if not name.startswith("."):
        return None
    for kind in (".tmp-", ".old-"):
        head, sep, tail = name.rpartition(kind)
        pid, _, token = tail.partition("-")
        if sep and head and pid.isdigit() and len(token) == 8:
            return int(pid)
    return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    except OSError:  # pragma: no cover - e.g. Windows without the signal
        return False
    return True


@contextlib.contextmanager
def lock_directory(directory: PathLike, name: str = LOCK_NAME) -> Iterator[Path]:
    """Hold `directory/.lock` (holding our PID) for the block; raise `DirectoryLockedError` if a live process has it.

    The lock is an `flock` on the file, which the kernel drops when its owner dies, plus the PID inside. A lock
    file whose owner is gone (flock free and the PID not alive) is taken over with a warning. The file is removed
    on exit.
    """
    path = Path(directory, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, owner = _open_locked(path, directory)
    try:
        if owner is not None and owner != os.getpid():
            logger.warning("Took over the stale lock %s of process %d, which is no longer running", path, owner)
        with disk_full_guard(path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            os.fsync(fd)
        try:
            yield path
        finally:
            with contextlib.suppress(FileNotFoundError):  # only our own file: it may have moved with its folder
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    path.unlink()
    finally:
        os.close(fd)  # releases the flock


def _open_locked(path: Path, directory: PathLike) -> tuple[int, int | None]:
    """Open and flock the lock file; retry if its holder removed it meanwhile (we would hold a dead inode)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        owner = _read_pid(fd)
        if not _try_lock(fd, owner):
            os.close(fd)
            raise DirectoryLockedError(f"{directory} is in use by process {owner} (lock file {path}). Wait for it "
                                       "to finish or use another folder; if that process is not ours, remove the "
                                       "lock file.")
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd, owner
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def _try_lock(fd: int, owner: int | None) -> bool:
    if fcntl is None:  # pragma: no cover - no flock: trust the PID
        return owner is None or owner == os.getpid() or not pid_alive(owner)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    # Free flock but a live owner: a filesystem that ignores flock (some network mounts). Trust the PID.
    return owner is None or owner == os.getpid() or not pid_alive(owner)


__all__ = [
    "DirectoryLockedError",
    "DiskFullError",
    "atomic_directory",
    "atomic_write_bytes",
    "atomic_write_text",
    "cleanup_staging",
    "disk_full_guard",
    "fsync_directory",
    "fsync_tree",
    "lock_directory",
    "pid_alive",
    "publish_directory",
    "staging_path",
]
