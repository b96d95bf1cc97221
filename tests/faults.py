"""The fault table's checks (tests/test_faults_*.py): a command run as a user runs it, in a subprocess on the CPU, and
its outcome: either one line and exit code 2 before any work, or correct handling; and in both cases, that no earlier
output changed (the hashes of every file before and after)."""

import hashlib
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from helpers.launch import cpu_environment
from helpers.train_with_faults import TRAIN_SCRIPT


def tree_hashes(*roots: Path) -> dict[str, str]:
    """SHA-256 of every file below `roots` (or of `roots` themselves, if files), keyed by path."""
    files = [path for root in roots for path in ([root] if root.is_file() else sorted(root.rglob("*")))]
    return {str(path): hashlib.sha256(path.read_bytes()).hexdigest() for path in files if path.is_file()}


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
