"""Commands in subprocesses on the CPU: plain, or as several processes of `accelerate launch` (one gloo group)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def cpu_environment() -> dict[str, str]:
    """No GPU, one torch thread per process (results then agree across process counts), no Hub access, and the
    tests' helpers importable (`helpers....`), as in the tests' own process."""
    path = os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_module(module: str, *args: str, processes: int = 1) -> subprocess.CompletedProcess:
    """`python -m module *args` on the CPU, under `accelerate launch --multi_gpu` with `processes` > 1."""
    return _run(["-m", module, *args], processes)


def run_script(script: Path, *args: str, processes: int = 1) -> subprocess.CompletedProcess:
    """`python script *args` on the CPU, under `accelerate launch --multi_gpu` with `processes` > 1."""
    return _run([str(script), *args], processes)


def _run(target: list[str], processes: int) -> subprocess.CompletedProcess:
    launcher = []
    if processes > 1:
        launcher = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
        launcher += ["--main_process_port", str(free_port())]
    command = [sys.executable, *launcher, *target]
    return subprocess.run(command, env=cpu_environment(), capture_output=True, text=True, timeout=300, cwd=REPO)
