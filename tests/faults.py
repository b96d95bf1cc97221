"""The fault table's checks (tests/test_faults_*.py): a command run as a user runs it, in a subprocess on the CPU, and
its outcome: either one line and exit code 2 before any work, or correct handling; and in both cases, that no earlier
output changed (the hashes of every file before and after). A command can also run with a fault at a call of a
function (`tests/helpers/fault_at.py`): held there while the test acts (`held_at`), or a full disk after it
(`run_with_full_disk`)."""

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from helpers.launch import REPO, cpu_environment
from helpers.train_with_faults import TRAIN_SCRIPT

from ddpm_plus.ownership import is_left_lock_file

FAULT_LAUNCHER = REPO / "tests" / "helpers" / "fault_at.py"


def tree_hashes(*roots: Path) -> dict[str, str]:
    """SHA-256 of every file below `roots` (or of `roots` themselves, if files), keyed by path; the empty lock file
    that a command leaves beside or in its output location (docs/failure-behaviour.md, run ownership) is no output
    and is left out, while a lock file with content, or a holder record left behind, counts as a change."""
    files = [path for root in roots for path in ([root] if root.is_file() else sorted(root.rglob("*")))]
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in files
        if path.is_file() and not is_left_lock_file(path)
    }


def run_ddpm_plus(
    *args: str, cwd: Path, timeout: float = 300, python_path: Sequence[Path] = ()
) -> subprocess.CompletedProcess:
    """`ddpm-plus *args` as a user runs it (`python -m ddpm_plus.cli`), in `cwd`, with `python_path` first on the
    module search path."""
    command = [sys.executable, "-m", "ddpm_plus.cli", *args]
    environment = cpu_environment()
    environment["PYTHONPATH"] = os.pathsep.join([*map(str, python_path), environment["PYTHONPATH"]])
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def run_train(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python train_scripts/train.py *args`, in `cwd`."""
    command = [sys.executable, str(TRAIN_SCRIPT), *args]
    return subprocess.run(command, env=cpu_environment(), capture_output=True, text=True, timeout=timeout, cwd=cwd)


def refusal(result: subprocess.CompletedProcess) -> str:
    """The one-line error of a refused command: exit code 2, no traceback, and the error line last on stderr
    (`ddpm-plus <command>: error: ...` or `train.py: error: ...`); returns the message after `error: `."""
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert not any(line.startswith("Traceback") for line in lines), result.stderr[-3000:]
    errors = [line for line in lines if ": error: " in line]
    assert errors == lines[-1:], result.stderr[-3000:]
    return errors[0].split(": error: ", 1)[1]


def assert_refused_without_change(
    result: subprocess.CompletedProcess, fragment: str, before: dict[str, str], *roots: Path
) -> None:
    """The command was refused in one line containing `fragment`, and every file below `roots` is as `before`."""
    message = refusal(result)
    assert fragment in message, message
    assert tree_hashes(*roots) == before


def run_with_full_disk(target: str, *command: str, cwd: Path, call: int = 1) -> subprocess.CompletedProcess:
    """`command` (`train ARGS` or `ddpm-plus ARGS`) with a full disk right after the `call`-th call of `target`
    (`module:Name.attribute`)."""
    launcher = [sys.executable, str(FAULT_LAUNCHER), "--full_disk", target, "--call", str(call), "--"]
    return subprocess.run(
        [*launcher, *command], env=cpu_environment(), capture_output=True, text=True, timeout=300, cwd=cwd
    )


@contextmanager
def held_at(target: str, *command: str, cwd: Path, call: int = 1, timeout: float = 120) -> Iterator[int]:
    """`command` (`train ARGS` or `ddpm-plus ARGS`) in a subprocess, held at the `call`-th call of `target` while
    the body runs (it then holds its output location); yields its process id. It is killed (SIGKILL) at the end."""
    with tempfile.TemporaryDirectory() as scratch:
        marker, log = Path(scratch) / "held", Path(scratch) / "log"
        launcher = [sys.executable, str(FAULT_LAUNCHER), "--hold", target, "--call", str(call), "--marker", str(marker)]
        with open(log, "w") as output:
            process = subprocess.Popen(
                [*launcher, "--", *command], env=cpu_environment(), stdout=output, stderr=output, cwd=cwd
            )
        try:
            deadline = time.monotonic() + timeout
            while not marker.exists():
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.1)
            yield process.pid
        finally:
            process.kill()
            process.wait()
