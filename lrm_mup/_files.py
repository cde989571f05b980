"""The few file-system primitives every stage shares: atomic writes, an exclusive file lock, strict JSON, checking
that an output folder can be written and undoing a failed start in it. One implementation of each (stages never roll
their own); threads per process are `lrm_mup._threads`'s.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from .errors import RunFolderError


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call `write(tmp)` on a sibling temporary path, then rename it over `path`: readers (and a crash) see the old
    file or the new one, never half of one. The temporary name carries the pid, so two processes never share it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def os_reason(err: OSError) -> str:
    """An OSError as the end of a sentence ("permission denied", "no space left on device"), never the raw
    "[Errno 13] Permission denied: 'x'" string."""
    return (err.strerror or type(err).__name__).lower()


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a parent we may not search: treated as there, so that the writable check names it
        return True


def check_out_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Check, before anything is computed or written, that `path` is (or can be created as) a folder this process
    may write in: not a file, under no file, its nearest existing folder writable. Raises `RunFolderError` naming the
    path and what to do; writes nothing. (Root passes the permission check everywhere but on read-only file systems:
    a later failure to create the folder is still one sentence, see `os_reason`.)"""
    path = Path(path)
    if _exists(path) and not path.is_dir():
        raise RunFolderError(f"{what} {str(path)!r} is a file, not a folder: pass another --out")
    ancestor = path
    while not _exists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RunFolderError(f"cannot create {what} {str(path)!r}: {str(ancestor)!r} is a file, not a folder; "
                             "pass another --out")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        where = "it" if ancestor == path else repr(str(ancestor))
        raise RunFolderError(f"cannot write {what} {str(path)!r}: {where} is not writable by this user; "
                             "pass another --out")
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def json_clean(x):
    """NaN/inf -> None, recursively (tuples become lists): what strict JSON readers accept."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: json_clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_clean(v) for v in x]
    return x


def dumps(x, **kw) -> str:
    """Strict JSON (non-finite floats written as null)."""
    return json.dumps(json_clean(x), allow_nan=False, **kw)


def write_json_atomic(path: str | os.PathLike, x, indent: int | None = 1) -> None:
    write_text_atomic(path, dumps(x, indent=indent) + "\n")


@contextlib.contextmanager
def undo_on_error(folder: str | os.PathLike):
    """Remove what the block created in `folder` if it raises (any exception, Ctrl-C included): the folder itself if
    it did not exist before (with the missing parents it was created with), else the entries it added at its top
    level. A failed start leaves nothing behind, so the same command can simply be run again."""
    folder = Path(folder)
    existed = folder.exists()
    top = folder  # the outermost folder that this block may create
    while not existed and not top.parent.exists() and top.parent != top.parent.parent:
        top = top.parent
    before = set(os.listdir(folder)) if existed and folder.is_dir() else set()
    try:
        yield
    except BaseException:
        if not existed:
            shutil.rmtree(top, ignore_errors=True)
        elif folder.is_dir():
            for name in set(os.listdir(folder)) - before:
                entry = folder / name
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        raise


class FileLock:
    """An flock(2) on `path`: exclusive (or shared) while held, released by the kernel when the holder dies, so a
    SIGKILLed process never leaves a stale lock. Usable as a context manager, or through acquire/release (the
    protocol optuna's JournalFileBackend takes as `lock_obj`). `blocking=False` raises BlockingIOError if taken."""

    def __init__(self, path: str | os.PathLike, *, shared: bool = False, blocking: bool = True):
        self.path, self.shared, self.blocking, self.fd = str(path), shared, blocking, None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        flags = (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | (0 if self.blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, flags)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return True

    def share(self) -> None:
        """Turn the held exclusive lock into a shared one (atomically: no other process can take it in between)."""
        fcntl.flock(self.fd, fcntl.LOCK_SH)
        self.shared = True

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

