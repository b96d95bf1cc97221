"""Launch: torch threads and backends per process, an `Accelerator` that runs multi-process on CPUs (gloo) when no
GPU is present, a refusal to train when the launcher started several processes that do not form one process group,
logging from the main process, and leaving the process group without gloo's exit hang."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ddpm_plus.extras import import_extra

if TYPE_CHECKING:
    from accelerate import Accelerator

# How long the main thread sleeps, without the GIL, before a process group is freed (see `process_group_lifetime`).
_COLLECTIVE_SETTLE_SECONDS = 1.0


def available_cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def torch_threads_per_process(requested: int | None = None) -> int:
    """Intra-op threads for this process: `requested`, else the usable cores shared by this machine's processes.

    `accelerate launch` exports OMP_NUM_THREADS=1 unless told otherwise, so torch would use one thread per process
    even when the processes leave cores idle; the default here divides the cores by LOCAL_WORLD_SIZE instead.
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"the number of torch threads must be positive, got {requested}.")
        return requested
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, available_cpu_cores() // local_processes)


def configure_backends(args: argparse.Namespace) -> int:
    """Torch threads (--num_threads), TF32 on CUDA (--allow_tf32) and deterministic algorithms (--deterministic);
    returns the thread count."""
    threads = torch_threads_per_process(args.num_threads)
    torch.set_num_threads(threads)
    if torch.cuda.is_available() and args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when the first cuBLAS handle is made
        torch.use_deterministic_algorithms(True, warn_only=True)
    return threads


def check_world_size(num_processes: int, environ: Mapping[str, str] = os.environ) -> None:
    """Refuse to train when the launcher started `WORLD_SIZE` processes that did not join one process group.

    Each of them would train its own copy on its own shard and never synchronise, silently wasting the run.
    """
    launched = int(environ.get("WORLD_SIZE", "1"))
    if launched > 1 and num_processes != launched:
        raise RuntimeError(
            f"The launcher started {launched} processes (WORLD_SIZE={launched}) but this one sees a group of "
            f"{num_processes}: the processes would train independent copies. On CPUs launch with "
            "`accelerate launch --multi_gpu --num_processes N ...` (this script then joins a gloo group) or set "
            "ACCELERATE_USE_CPU=1; `accelerate launch --cpu --num_processes N` starts a single process."
        )


def create_accelerator(
    *,
    mixed_precision: str = "no",
    gradient_accumulation_steps: int = 1,
    project_dir: str | Path = ".",
    report_to: str | None = None,
    cpu: bool | None = None,
) -> Accelerator:
    """An `Accelerator` for training; on a machine without a GPU it runs on CPUs (gloo for several processes).

    Args:
        mixed_precision: "no", "fp16" (GPU only) or "bf16".
        gradient_accumulation_steps: micro-batches per optimizer step.
        project_dir: the run's output directory; trackers log to `project_dir/logs`.
        report_to: an accelerate tracker name ("tensorboard", ...) or None.
        cpu: force CPU (True) or not (False); by default, CPU exactly when CUDA is unavailable.
    """
    accelerate = import_extra("accelerate", "train")

    use_cpu = not torch.cuda.is_available() if cpu is None else cpu
    if mixed_precision == "fp16" and use_cpu:
        raise ValueError("--mixed_precision fp16 needs a GPU; use bf16 or no on CPUs.")
    project_dir = Path(project_dir)
    accelerator = accelerate.Accelerator(
        cpu=use_cpu,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        log_with=report_to,
        project_config=accelerate.utils.ProjectConfiguration(
            project_dir=str(project_dir), logging_dir=str(project_dir / "logs")
        ),
    )
    check_world_size(accelerator.num_processes)
    return accelerator


def log_on_main_process(logger_name: str, level: int, message: str) -> None:
    """Log `message` once, from the main process, through accelerate's logger (as the training script logs, with the
    process rank); accelerate is imported here, so that `import ddpm_plus.training` works without it."""
    get_logger = import_extra("accelerate.logging", "train").get_logger
    get_logger(logger_name).log(level, message, main_process_only=True)


@contextmanager
def process_group_lifetime(accelerator: Accelerator) -> Iterator[None]:
    """Run the body, then leave the process group without the exit hang of gloo.

    After a successful body every process waits for the others (the main one may still be writing outputs), so that
    they leave together; then the trackers and the process group are closed. With several processes the main thread
    first sleeps briefly, on success and on error: gloo's worker threads free each finished collective after waking
    its caller, and freeing a tensor created in Python takes the GIL. If the process group were freed (with the DDP
    model) meanwhile, its destructor would join those threads while holding the GIL, and the process would hang.
    """
    try:
        yield
    except BaseException:
        _let_collectives_settle(accelerator)
        raise
    accelerator.wait_for_everyone()
    _let_collectives_settle(accelerator)
    accelerator.end_training()


def _let_collectives_settle(accelerator: Accelerator) -> None:
    if accelerator.num_processes > 1:
        time.sleep(_COLLECTIVE_SETTLE_SECONDS)
