"""Run ownership: every command that writes (training, `ddpm-plus sample`, `bpd`, `fid --output`, `convert`) holds an
exclusive OS file lock on its output location for its whole life, so that a second run into the same place is
refused in one line naming the holder, before any work.

The lock is `filelock`'s (flock on POSIX): the kernel frees it when its process ends, even by SIGKILL. The lock file
of a training folder lies inside it (`.ddpm_plus.lock`); the lock file of a file or of a folder that is replaced
whole lies beside it (`.<name>.ddpm_plus.lock`). The lock file stays in place after a run (removing it would let two
runs hold locks on different files of one name); who holds it is recorded beside it (`<lock file>.holder`) while it
is held. Under `accelerate launch` only the main process locks: the others belong to its run.

This module imports no torch: the command line checks a location before it loads anything.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

LOCK_FILE = ".ddpm_plus.lock"
HOLDER_SUFFIX = ".holder"


def folder_lock_file(folder: Path) -> Path:
    """The lock file of an output folder that is filled in place (training's --output_dir): inside it."""
    return folder / LOCK_FILE


def beside_lock_file(path: Path) -> Path:
    """The lock file of an output file, or of a folder that is replaced whole: beside it."""
    return path.with_name(f".{path.name}{LOCK_FILE}")


def is_left_lock_file(path: Path) -> bool:
    """Whether `path` is a lock file as a run leaves it: empty, and no output of any run."""
    return path.name.endswith(LOCK_FILE) and path.stat().st_size == 0


def is_main_launched_process() -> bool:
    """Whether this process is the main one (rank 0) of `accelerate launch`, or was started alone."""
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def owned(lock_file: Path, location: str, command: str) -> Iterator[None]:
    """Hold `lock_file` (created, with its folder) for the body, on the main process only; a ValueError naming
    `location` (e.g. "--output_dir runs/x") and the holder when another process holds it.

    A folder created for the lock that holds nothing else when the body ends is removed again, so that a run refused
    for bad input leaves no trace.
    """
    if not is_main_launched_process():
        yield
        return
    folder = lock_file.parent
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_file), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ValueError(
            f"{location} is in use by another run ({_holder_description(lock_file)}); wait for it to finish or "
            "choose another location."
        ) from None
    holder = _holder_file(lock_file)
    try:
        _write_holder(holder, command)
        yield
    finally:
        holder.unlink(missing_ok=True)
        if created and list(folder.iterdir()) == [lock_file]:
            lock_file.unlink()
            folder.rmdir()
        lock.release()


def _holder_file(lock_file: Path) -> Path:
    return lock_file.with_name(lock_file.name + HOLDER_SUFFIX)


def _write_holder(path: Path, command: str) -> None:
    holder = {
        "command": command,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    path.write_text(json.dumps(holder), encoding="utf-8")


def _holder_description(lock_file: Path) -> str:
    """'train.py, pid 1234 on host, started 2026-12-07 06:40 UTC', as the holder recorded it."""
    try:
        holder = json.loads(_holder_file(lock_file).read_text(encoding="utf-8"))
        return f"{holder['command']}, pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"its holder is not recorded; the lock file is {lock_file}"
