"""Atomic file writes: a file is replaced completely or not at all, even if the process dies.

Used for checkpoints, training state and generated images: write a temporary file in the same
folder, fsync it, then rename it over the target (`os.replace` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    # the rename itself must reach the disk too; directories cannot be opened on some platforms
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    # /proc gives it without changing it; elsewhere the set-and-restore is the only way to read it
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_permissions(path: Path) -> Path:
    """Give a file or folder from `tempfile` (created 0600 / 0700) the mode a plain `open` or
    `mkdir` would have given it, so what we write is as readable as any other file of the user."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())
    return path


def temp_dir_beside(target: str | os.PathLike) -> Path:
    """An empty folder `.{name}.tmp-*` next to `target` (its parent created if needed), with the mode
    `mkdir` would give it: write a whole folder there, then rename it over `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return default_permissions(Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent)))


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """A temporary path beside `path`; on success it is fsynced and renamed onto `path`.

    Whatever writes into the yielded path (safetensors, torch.save, PIL) either completes or leaves
    `path` exactly as it was. With `overwrite=False` an existing `path` raises FileExistsError and
    is never replaced, even by a concurrent writer (the final step is a hard link).
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        default_permissions(tmp)  # after the write: some writers (safetensors) replace the file
        _fsync_file(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if `path` exists: no window for a silent overwrite
            except FileExistsError:
                raise
            except OSError:  # file systems without hard links
                if path.exists():
                    raise FileExistsError(f"{path} already exists") from None
                os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


# the names `atomic_path` (mkstemp) and `temp_dir_beside` (mkdtemp) give their temporaries:
# `.{target}.{8 random}.tmp` and `.{target}.tmp-{8 random}`
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)(?:\.[a-z0-9_]{8}\.tmp|\.tmp-[a-z0-9_]{8})$")


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on the folder `path`, or None when another open file holds one (a live
    writer). The lock goes with the process: a process killed even with -9 holds none. Without flock (Windows)
    every folder counts as locked, so nothing is taken for stale."""
    try:
        import fcntl
    except ImportError:
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _is_live(folder: Path) -> bool:
    try:
        fd = _try_lock(folder)
    except OSError:
        return False
    if fd is None:
        return True
    os.close(fd)
    return False


def remove_temporaries(directory: str | os.PathLike, targets: set[str] | None = None) -> list[Path]:
    """Delete the temporaries that writes into `directory` left behind (a process killed mid-write
    leaves them), for the target names in `targets` (all when None); returns what was removed.

    Only the exact name patterns of `atomic_path` and `temp_dir_beside` are matched, so nothing
    else in the folder is touched. A folder that a live `building_folder` holds (in this process or
    another) is kept; temporary files are not locked, so call it only when no file write into the
    folder can be under way."""
    directory = Path(directory)
    removed = []
    for path in sorted(directory.iterdir()) if directory.is_dir() else ():
        match = _TEMP_NAME.match(path.name)
        if match is None or (targets is not None and match["target"] not in targets):
            continue
        if path.is_dir() and not path.is_symlink():
            if _is_live(path):
                continue
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


@contextlib.contextmanager
def building_folder(target: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """A folder that appears whole or not at all: yields an empty folder beside `target` and renames it onto
    `target` when the block completes; removes it when the block fails or is interrupted.

    An empty `target` is replaced; a non-empty one raises FileExistsError at the end unless `replace`. The
    temporaries of `target` that dead processes left (killed with -9: a model's weights, maybe gigabytes) are
    removed first; the yielded folder stays locked while this process lives, so no other run takes it for stale.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_temporaries(target.parent, {target.name})
    # created under a name no cleaner matches, locked, then named as a temporary: never removed while it is new
    fresh = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
    lock = _try_lock(fresh)
    tmp = fresh.with_name(fresh.name.replace(".new-", ".tmp-"))
    os.rename(fresh, tmp)
    try:
        default_permissions(tmp)
        yield tmp
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        if target.exists():
            if not replace:
                raise FileExistsError(f"{target} is not empty")
            old = temp_dir_beside(target)
            os.replace(target, old / target.name)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
        fsync_dir(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if lock is not None:
            os.close(lock)


__all__ = ["atomic_path", "building_folder", "default_permissions", "fsync_dir", "remove_temporaries", "temp_dir_beside"]
