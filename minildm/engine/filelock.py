"""An exclusive lock between processes, held on a lock file (used by the artifact store).

On POSIX the lock is an ``fcntl.flock`` on the file: the operating system releases it when the
holder exits, even after a crash, so a stale lock cannot exist. The holder writes its pid into the
file (for the message of a process that waits) and removes the file when it releases the lock; a
process that was waiting on the removed file notices and locks the file now at the path.

Where ``fcntl`` is missing (Windows) the lock is the file itself, created with ``O_EXCL`` and
holding the owner's pid; a process that finds it waits (polling) until it is removed, and takes
it over if the pid it names is no longer running (a crashed owner).

Used by :mod:`minildm.recipes.store` so that two runs of the same artifact do not write over each other.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["FileLock", "lock_owner", "pid_alive"]

#: an O_EXCL lock file without a pid (its owner died between creating and writing it) is stale after this
EMPTY_LOCK_STALE_S = 10.0


def lock_owner(path: str | os.PathLike[str]) -> int | None:
    """The pid written in the lock file ``path``; None if there is none (or no file)."""
    try:
        text = Path(path).read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def pid_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` is running on this machine."""
    if pid <= 0:
        return False
    if sys.platform == "win32":
        import ctypes

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return kernel32.GetLastError() == 5  # access denied: it exists
        try:
            code = ctypes.c_ulong()
            ok = kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
            return not ok or code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FileLock:
    """An exclusive lock on the file ``path`` between processes (and between threads of one process).

    ``with FileLock(path, on_wait=f):`` takes the lock, waiting as long as another holder has it; if
    it has to wait, ``f(pid)`` is called once first with the holder's pid (None if unknown). The lock
    file is removed on release. ``method``: ``"flock"`` (POSIX), ``"create"`` (an ``O_EXCL`` file
    holding the pid, the fallback where ``fcntl`` is missing) or ``"auto"`` (flock where available).
    Not reentrant: taking a lock the same process already holds waits forever.
    """

    def __init__(self, path: str | os.PathLike[str], *, on_wait: Callable[[int | None], None] | None = None,
                 method: str = "auto", poll_s: float = 0.2) -> None:
        if method not in ("auto", "flock", "create"):
            raise ValueError(f"unknown lock method {method!r}: choose auto, flock or create")
        if method == "auto":
            method = "flock" if fcntl is not None else "create"
        if method == "flock" and fcntl is None:
            raise ValueError("fcntl.flock is not available on this platform: use method='create'")
        self.path, self.on_wait, self.method, self.poll_s = Path(path), on_wait, method, poll_s
        self._fd: int | None = None
        self._held = False

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._held

    def _waiting(self, notified: bool) -> bool:
        if not notified and self.on_wait is not None:
            self.on_wait(lock_owner(self.path))
        return True

    def acquire(self) -> None:
        """Take the lock, waiting for the holder to release it (see the class docstring)."""
        if self._held:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.method == "flock":
            self._acquire_flock()
        else:
            self._acquire_create()
        self._held = True

    def _acquire_flock(self) -> None:
        notified = False
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    notified = self._waiting(notified)
                    fcntl.flock(fd, fcntl.LOCK_EX)
                # the previous holder removes the file on release: the lock counts only on the file at the path
                try:
                    current = os.stat(self.path)
                except FileNotFoundError:
                    current = None
                mine = os.fstat(fd)
                if current is not None and (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev):
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode("ascii"))
                    self._fd = fd
                    return
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    def _acquire_create(self) -> None:
        notified = False
        while True:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if self._stale():
                    try:
                        os.remove(self.path)
                    except OSError:
                        pass
                    continue
                notified = self._waiting(notified)
                time.sleep(self.poll_s)
                continue
            try:
                os.write(fd, f"{os.getpid()}\n".encode("ascii"))
            finally:
                os.close(fd)
            return

    def _stale(self) -> bool:
        """Whether the O_EXCL lock file names a process that is gone (or stayed empty too long)."""
        pid = lock_owner(self.path)
        if pid is not None:
            return not pid_alive(pid)
        try:
            return time.time() - os.stat(self.path).st_mtime > EMPTY_LOCK_STALE_S
        except FileNotFoundError:
            return False

    def release(self) -> None:
        """Remove the lock file and release the lock (no-op when not held)."""
        if not self._held:
            return
        self._held = False
        try:
            os.remove(self.path)  # before unlocking, so that no one locks a file that is being removed
        except FileNotFoundError:
            pass
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
