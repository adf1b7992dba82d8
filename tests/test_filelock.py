"""FileLock: one holder at a time, the waiter is told who holds it, stale O_EXCL locks are taken over."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from minildm.engine.filelock import FileLock, lock_owner, pid_alive


@pytest.mark.parametrize("method", ["flock", "create"])
def test_second_holder_waits_and_is_told_the_pid(tmp_path, method):
    path = tmp_path / ".x.lock"
    seen: list[int | None] = []
    order: list[str] = []
    first = FileLock(path, method=method, poll_s=0.02)
    first.acquire()
    assert lock_owner(path) == os.getpid()

    def second() -> None:
        with FileLock(path, method=method, on_wait=seen.append, poll_s=0.02):
            order.append("second")

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.3)
    assert order == [] and seen == [os.getpid()]  # waiting, told once who holds the lock
    order.append("first released")
    first.release()
    thread.join(5)
    assert order == ["first released", "second"] and seen == [os.getpid()]
    assert not path.exists()  # removed on release


def test_create_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)
    assert not pid_alive(pid) and pid_alive(os.getpid())
    path = tmp_path / ".x.lock"
    path.write_text(f"{pid}\n")
    waited: list[int | None] = []
    with FileLock(path, method="create", on_wait=waited.append):
        assert lock_owner(path) == os.getpid()
    assert waited == [] and not path.exists()


def test_unknown_method():
    with pytest.raises(ValueError, match="auto, flock or create"):
        FileLock("x.lock", method="mutex")
