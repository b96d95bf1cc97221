"""Building blocks of the training script `train_scripts/train.py`, importable so that they can be tested and timed.

* Launch: torch threads per process, an `Accelerator` that runs multi-process on CPUs (gloo) when no GPU is present,
  and a refusal to train when the launcher started several processes that do not form one process group.
* Data order: a deterministic, resumable sharding of every epoch into optimizer steps, micro-batches and processes.
* The objective: timesteps from a timestep sampler, noise from our own generators, x_t = q(x_t | x_0) (eq. 4) and
  the loss from `DDPMPlusScheduler.training_losses` (eq. 14, or the variational bound of eq. 5), weighted by the
  sampler's importance weights.
* One optimizer step: gradient accumulation, clipping, learning-rate schedule, EMA of the weights; a step whose loss
  or gradient is not finite on any process changes nothing.
* Checkpoints: `Accelerator.save_state` plus our own state (EMA, timestep sampler, step, generators), written to a
  temporary directory and renamed when complete, so that an interrupted save never becomes the latest checkpoint.
  A manifest (size and SHA-256 of every file), written last, lets a resume verify a checkpoint before loading it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset, Sampler

from ddpm_plus.extras import import_extra
from ddpm_plus.timestep_samplers import LossSecondMomentResampler, UniformSampler

if TYPE_CHECKING:
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel

    from ddpm_plus.scheduling_ddpm_plus import DDPMPlusScheduler

CHECKPOINT_PREFIX = "checkpoint-"
TRAINING_STATE_FILE = "training_state.json"
EMA_WEIGHTS_FILE = "ema.safetensors"
MANIFEST_FILE = "manifest.json"
_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")
_TEMPORARY_SUFFIX = ".tmp"
_TEMPORARY_NAME = re.compile(r"\.checkpoint-\d+\.tmp")
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", f"os error {errno.ENOSPC}")
_NEARLY_FULL_BYTES = 1 << 20  # a write that fails with less than this left on its disk failed for want of space


class TrainingError(RuntimeError):
    """A run stopped for a reason that one line explains (divergence, a full disk): the script prints it alone."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (corrupt, truncated, incomplete); the message names the bad file."""


# --------------------------------------------------------------------------------------------- launch


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


# How long the main thread sleeps, without the GIL, before a process group is freed (see `process_group_lifetime`).
_COLLECTIVE_SETTLE_SECONDS = 1.0


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


def derived_seed(*keys: int) -> int:
    """A 63-bit seed derived from integer keys (e.g. the run seed, the process index, a stream number)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


# --------------------------------------------------------------------------------------------- data order


class ShardedBatchSampler(Sampler[list[int]]):
    """This process's micro-batches of an epoch, resumable at any optimizer step.

    Each epoch is a permutation of the items that depends only on (seed, epoch), so all processes agree on it
    without communicating. Optimizer step s, micro-batch m (of `accumulation_steps`) and process r take the
    `batch_size` positions starting at ((s·A + m)·P + r)·B: every global batch is split into disjoint shards, one
    per process. Items left over after the last full optimizer step of an epoch are skipped in that epoch.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        *,
        num_processes: int = 1,
        process_index: int = 0,
        accumulation_steps: int = 1,
        seed: int = 0,
    ):
        if min(batch_size, num_processes, accumulation_steps) < 1 or not 0 <= process_index < num_processes:
            raise ValueError(
                f"invalid sharding: batch_size={batch_size}, num_processes={num_processes}, "
                f"process_index={process_index}, accumulation_steps={accumulation_steps}."
            )
        self.num_items = num_items
        self.batch_size = batch_size
        self.num_processes = num_processes
        self.process_index = process_index
        self.accumulation_steps = accumulation_steps
        self.seed = seed
        self.epoch = 0
        self.start_step = 0
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"The training set has {num_items} images, fewer than one optimizer step takes "
                f"({self.images_per_step} = train_batch_size {batch_size} × {num_processes} processes × "
                f"{accumulation_steps} accumulation steps); lower --train_batch_size or add images."
            )

    @property
    def images_per_step(self) -> int:
        """Images consumed by one optimizer step over all processes."""
        return self.batch_size * self.num_processes * self.accumulation_steps

    @property
    def steps_per_epoch(self) -> int:
        return self.num_items // self.images_per_step

    def set_position(self, epoch: int, step_in_epoch: int = 0) -> None:
        """Continue with `epoch` at optimizer step `step_in_epoch` of it."""
        if not 0 <= step_in_epoch < self.steps_per_epoch:
            raise ValueError(f"step_in_epoch must lie in 0..{self.steps_per_epoch - 1}, got {step_in_epoch}.")
        self.epoch = epoch
        self.start_step = step_in_epoch

    def epoch_permutation(self, epoch: int) -> np.ndarray:
        """The order of all items in `epoch` (the same on every process)."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_items)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.epoch_permutation(self.epoch)
        first_micro_batch = self.start_step * self.accumulation_steps
        for micro_batch in range(first_micro_batch, self.steps_per_epoch * self.accumulation_steps):
            start = (micro_batch * self.num_processes + self.process_index) * self.batch_size
            yield order[start : start + self.batch_size].tolist()

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accumulation_steps


def optimizer_step_batches(
    dataset: Dataset,
    sampler: ShardedBatchSampler,
    *,
    first_step: int,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[tuple[list[torch.Tensor], list[list[int]]]]:
    """Yield, for each optimizer step from global step `first_step` on, its micro-batches and their item indices.

    Epochs follow one another without end; the caller stops. Each epoch's loader gets its own seeded generator,
    so workers' seeds and the position in the data depend only on the step, not on what ran before a resume.
    """
    epoch, step_in_epoch = divmod(first_step, sampler.steps_per_epoch)
    while True:
        sampler.set_position(epoch, step_in_epoch)
        loader = DataLoader(
            _IndexedDataset(dataset),
            batch_sampler=sampler,
            num_workers=num_workers,
            pin_memory=pin_memory,
            generator=torch.Generator().manual_seed(derived_seed(sampler.seed, sampler.process_index, epoch)),
        )
        micro_batches: list[torch.Tensor] = []
        indices: list[list[int]] = []
        for images, item_indices in loader:
            micro_batches.append(images)
            indices.append(item_indices.tolist())
            if len(micro_batches) == sampler.accumulation_steps:
                yield micro_batches, indices
                micro_batches, indices = [], []
        epoch, step_in_epoch = epoch + 1, 0


class _IndexedDataset(Dataset):
    """Items of `dataset` together with their index (to record which process saw which items)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.dataset[index], index


# --------------------------------------------------------------------------------------------- the objective


@dataclass
class TrainingGenerators:
    """Our own random streams: timesteps (CPU, as the samplers draw there) and noise (on the training device)."""

    timesteps: torch.Generator
    noise: torch.Generator

    @classmethod
    def create(cls, seed: int, process_index: int, device: torch.device) -> TrainingGenerators:
        """Independent streams per process, reproducible from the run seed."""
        timesteps = torch.Generator().manual_seed(derived_seed(seed, process_index, 0))
        noise = torch.Generator(device=device).manual_seed(derived_seed(seed, process_index, 1))
        return cls(timesteps=timesteps, noise=noise)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"timesteps": self.timesteps.get_state(), "noise": self.noise.get_state().cpu()}

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        self.timesteps.set_state(state["timesteps"])
        self.noise.set_state(state["noise"])


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor  # scalar: the importance-weighted mean of the per-sample losses
    per_sample_loss: torch.Tensor  # (B,) unweighted, detached (what the timestep sampler learns from)
    timesteps: torch.Tensor  # (B,) on the CPU


@dataclass
class DiffusionObjective:
    """The per-batch DDPM loss through the scheduler's public API (no second copy of the math).

    t ~ the timestep sampler, ε ~ N(0, I), x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε (eq. 4); the loss is `training_losses`
    ("simple" is eq. 14; "vlb", "hybrid" and "kl" use the bound terms of eq. 5), each sample weighted by the
    sampler's importance weight 1 / (T p_t), which keeps the estimate of the sum over t unbiased.
    """

    scheduler: DDPMPlusScheduler
    timestep_sampler: UniformSampler
    loss_type: str = "simple"
    snr_gamma: float | None = None
    vlb_weight: float = 0.001
    channels_last: bool = False

    def __call__(self, model: torch.nn.Module, x0: torch.Tensor, generators: TrainingGenerators) -> ObjectiveOutput:
        timesteps, weights = self.timestep_sampler.sample(x0.shape[0], "cpu", generators.timesteps)
        noise = torch.randn(x0.shape, generator=generators.noise, device=x0.device, dtype=x0.dtype)
        # The scheduler's tables live on the CPU: CPU timesteps index them without a device round trip.
        x_t = self.scheduler.q_sample(x0, noise, timesteps)
        model_input = x_t.contiguous(memory_format=torch.channels_last) if self.channels_last else x_t
        model_output = model(model_input, timesteps.to(x0.device, non_blocking=True)).sample
        terms = self.scheduler.training_losses(
            model_output.float(),
            x0,
            noise,
            timesteps,
            loss_type=self.loss_type,
            x_t=x_t,
            snr_gamma=self.snr_gamma,
            vlb_weight=self.vlb_weight,
        )
        per_sample = terms["loss"]
        loss = (per_sample * weights.to(x0.device, non_blocking=True)).mean()
        return ObjectiveOutput(loss=loss, per_sample_loss=per_sample.detach(), timesteps=timesteps)


# --------------------------------------------------------------------------------------------- one optimizer step


@dataclass
class StepOutput:
    loss: torch.Tensor  # detached mean loss of the step's micro-batches on this process (not synchronised)
    grad_norm: torch.Tensor | None  # total gradient norm before clipping (unscaled under fp16)
    nonfinite: str | None = None  # "loss" or "gradient" when that was not finite on some process: nothing changed


@dataclass
class TrainingStep:
    """One optimizer step: accumulate gradients over micro-batches, clip, step, schedule the LR, update the EMA.

    The learning-rate scheduler is stepped here once per optimizer step (it is not prepared by accelerate, which
    would step it once per process), and not when a mixed-precision overflow made the optimizer skip its step.
    A step whose loss or gradient is not finite on any process (all processes take the same decision) changes
    nothing: no optimizer update, no learning-rate or EMA step, no timestep-sampler update. Under fp16 loss scaling a
    non-finite gradient with a finite loss is an overflow, which the loss scaler skips and handles as usual.
    """

    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    objective: DiffusionObjective
    generators: TrainingGenerators
    ema: EMAModel | None = None
    max_grad_norm: float = 1.0
    parameters: list[torch.nn.Parameter] = field(init=False)

    def __post_init__(self) -> None:
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]

    def __call__(self, micro_batches: Sequence[torch.Tensor]) -> StepOutput:
        accelerator = self.accelerator
        loss_sum = torch.zeros((), device=accelerator.device)
        outputs: list[ObjectiveOutput] = []
        for x0 in micro_batches:
            with accelerator.accumulate(self.model):
                output = self.objective(self.model, x0.to(accelerator.device, non_blocking=True), self.generators)
                accelerator.backward(output.loss)
                loss_sum += output.loss.detach()
                outputs.append(output)
                if accelerator.sync_gradients:
                    grad_norm, nonfinite = self._update_if_finite(loss_sum)
        if not accelerator.sync_gradients:
            raise RuntimeError("gradient accumulation is out of step with the micro-batches of an optimizer step.")
        step_output = StepOutput(loss=loss_sum / len(micro_batches), grad_norm=grad_norm, nonfinite=nonfinite)
        if nonfinite is not None:
            return step_output
        for output in outputs:
            self._update_timestep_sampler(output)
        if not accelerator.optimizer_step_was_skipped:
            self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.step(self.parameters)
        return step_output

    def _update_if_finite(self, loss_sum: torch.Tensor) -> tuple[torch.Tensor, str | None]:
        """Clip (or, with clipping off, only measure) the gradients, then step unless something is not finite."""
        grad_norm = self.accelerator.clip_grad_norm_(self.parameters, self.max_grad_norm or math.inf)
        nonfinite = self._nonfinite_part(loss_sum, grad_norm)
        if nonfinite is None:
            self.optimizer.step()
        elif self.accelerator.scaler is not None:
            self.accelerator.scaler.update()  # close the loss scaler's step: clipping unscaled the gradients
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, nonfinite

    def _nonfinite_part(self, loss_sum: torch.Tensor, grad_norm: torch.Tensor) -> str | None:
        """Which part ("loss", "gradient") is not finite on some process, or None; the same on every process."""
        flags = torch.stack([~torch.isfinite(loss_sum), ~torch.isfinite(grad_norm.to(loss_sum.device))])
        bad_loss, bad_gradient = self.accelerator.reduce(flags.float(), "sum").tolist()
        if bad_loss:
            return "loss"
        if bad_gradient and self.accelerator.scaler is None:
            return "gradient"
        return None

    def _update_timestep_sampler(self, output: ObjectiveOutput) -> None:
        """Feed the losses of all processes to a loss-aware sampler, so every process keeps the same state."""
        if not isinstance(self.objective.timestep_sampler, LossSecondMomentResampler):
            return  # the uniform sampler learns nothing: skip the collective
        device = self.accelerator.device
        timesteps, losses = self.accelerator.gather((output.timesteps.to(device), output.per_sample_loss))
        self.objective.timestep_sampler.update_with_losses(timesteps, losses)


def build_optimizer(
    parameters: Sequence[torch.nn.Parameter],
    *,
    learning_rate: float,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    eps: float = 1e-8,
    device: torch.device | str = "cpu",
) -> torch.optim.AdamW:
    """AdamW with the fastest implementation of the same update: fused kernels on CUDA, foreach on CPU."""
    implementation = {"fused": True} if torch.device(device).type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(
        parameters, lr=learning_rate, betas=betas, weight_decay=weight_decay, eps=eps, **implementation
    )


def set_optimizer_hyperparameters(
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    learning_rate: float,
    betas: tuple[float, float],
    weight_decay: float,
    eps: float,
) -> None:
    """Apply the given hyper-parameters to an optimizer and its schedule restored from a checkpoint.

    A restored optimizer keeps the values it was saved with; this makes `learning_rate` the base of the schedule
    from the current step on (the current rate is rescaled by the ratio of the bases) and sets the AdamW settings.
    """
    for group, base in zip(optimizer.param_groups, lr_scheduler.base_lrs, strict=True):
        group["lr"] *= learning_rate / base
        group.update(initial_lr=learning_rate, betas=betas, weight_decay=weight_decay, eps=eps)
    lr_scheduler.base_lrs = [learning_rate] * len(optimizer.param_groups)
    lr_scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every value of every tensor is finite."""
    flags = [torch.isfinite(tensor).all() for tensor in tensors]
    return bool(torch.stack(flags).all()) if flags else True


# --------------------------------------------------------------------------------------------- checkpoints


def complete_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the finished checkpoints in `output_dir`, oldest first; temporary directories are ignored."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.iterdir():
        match = _CHECKPOINT_NAME.fullmatch(path.name)
        if match and path.is_dir() and (path / TRAINING_STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The finished checkpoint with the highest step in `output_dir`, or None."""
    checkpoints = complete_checkpoints(output_dir)
    return checkpoints[-1][1] if checkpoints else None


@dataclass
class ResumeChoice:
    """The checkpoint a run resumes from, whether its manifest verified it, and the newer ones that failed."""

    path: Path
    verified: bool  # False: written before manifests existed, so only its structure was checked
    rejected: list[tuple[Path, str]] = field(default_factory=list)  # newer checkpoints that failed, with the reason


def resolve_resume_checkpoint(resume_from: str | None, output_dir: str | Path) -> ResumeChoice | None:
    """The checkpoint to resume from, verified: None, "latest" or a checkpoint directory.

    "latest" is the newest checkpoint in `output_dir` that verifies (None when there is none yet); a CheckpointError
    when checkpoints exist but none verifies. A given directory that does not verify is a CheckpointError naming
    the bad file.
    """
    if resume_from is None:
        return None
    if resume_from != "latest":
        path = Path(resume_from)
        if not (path / TRAINING_STATE_FILE).is_file():
            raise ValueError(
                f"--resume_from_checkpoint {resume_from}: not a finished checkpoint (no {TRAINING_STATE_FILE})."
            )
        return ResumeChoice(path, verify_checkpoint(path))
    rejected = []
    for _, path in reversed(complete_checkpoints(output_dir)):
        try:
            return ResumeChoice(path, verify_checkpoint(path), rejected)
        except CheckpointError as error:
            rejected.append((path, str(error)))
    if rejected:
        reasons = " ".join(reason for _, reason in rejected)
        raise CheckpointError(f"No checkpoint in {output_dir} can be resumed from: {reasons}")
    return None


def verify_checkpoint(path: str | Path) -> bool:
    """Check a finished checkpoint before it is loaded; CheckpointError naming the first bad file.

    Returns True when every file matches the size and SHA-256 of the manifest, False for a checkpoint written before
    manifests existed: then only its structure is checked (its JSON files parse, its safetensors headers are
    complete).
    """
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        _check_structure(path)
        return False
    files = _read_json(manifest_path)["files"]
    for name, expected in files.items():  # sizes first: cheap, and they catch truncation
        size = (path / name).stat().st_size if (path / name).is_file() else None
        if size is None:
            raise CheckpointError(f"{path / name} is missing from the checkpoint.")
        if size != expected["size"]:
            raise CheckpointError(f"{path / name} has {size} bytes, its manifest records {expected['size']}.")
    for name, expected in files.items():
        if _fingerprint(path / name)["sha256"] != expected["sha256"]:
            raise CheckpointError(f"{path / name} does not match its SHA-256 checksum in {manifest_path}.")
    return True


def _check_structure(path: Path) -> None:
    """CheckpointError unless the JSON files of a checkpoint parse and its safetensors files are complete and finite
    (earlier versions could checkpoint the weights of a diverged run)."""
    for file in sorted(path.rglob("*.json")):
        _read_json(file)
    for file in sorted(path.rglob("*.safetensors")):
        try:
            tensors = load_file(str(file))
        except SafetensorError as error:
            raise CheckpointError(f"{file} is not a complete safetensors file ({error}).") from None
        if not all_finite(tensor for tensor in tensors.values() if tensor.is_floating_point()):
            raise CheckpointError(f"{file} holds non-finite values (saved after the run diverged).")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON (truncated or corrupt: {error}).") from None


def remove_unfinished_checkpoints(output_dir: str | Path) -> list[Path]:
    """Delete the temporary directories of checkpoint saves that were interrupted (killed); returns them."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    unfinished = sorted(path for path in output_dir.iterdir() if _TEMPORARY_NAME.fullmatch(path.name))
    for path in unfinished:
        shutil.rmtree(path)
    return unfinished


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | Path,
    step: int,
    write_extra_state: Callable[[Path], None],
    *,
    total_limit: int | None = None,
) -> Path:
    """Write checkpoint `checkpoint-<step>` atomically; call on every process.

    Everything (accelerate's state, then `write_extra_state(directory)` on every process) goes to a temporary
    directory. Once all files are written, the main process flushes them to disk, records their sizes and SHA-256
    in the manifest (the last file written) and renames the directory. Older checkpoints beyond `total_limit` are
    then removed. A failed write removes the temporary directory and leaves the earlier checkpoints as they were;
    a full disk or another OSError becomes a one-line TrainingError.
    """
    output_dir = Path(output_dir)
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    temporary = output_dir / f".{final.name}{_TEMPORARY_SUFFIX}"
    try:
        with explained_write_errors(f"checkpoint {final.name}", output_dir):
            _write_checkpoint(accelerator, temporary, write_extra_state)
    except Exception:
        if accelerator.is_main_process:
            shutil.rmtree(temporary, ignore_errors=True)
        raise
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
        prune_checkpoints(output_dir, total_limit, newest_step=step)
    accelerator.wait_for_everyone()
    return final


def _write_checkpoint(accelerator: Accelerator, temporary: Path, write_extra_state: Callable[[Path], None]) -> None:
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    write_extra_state(temporary)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {
            path.relative_to(temporary).as_posix(): _fingerprint(path, flush=True)
            for path in sorted(temporary.rglob("*"))
            if path.is_file()
        }
        write_json(temporary / MANIFEST_FILE, {"format": 1, "files": files})
        _fingerprint(temporary / MANIFEST_FILE, flush=True)


def _fingerprint(path: Path, *, flush: bool = False) -> dict[str, Any]:
    """Size and SHA-256 of a file; with `flush`, also fsync it, so that a rename publishes it complete."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
        if flush:
            os.fsync(handle.fileno())
    return {"size": size, "sha256": digest.hexdigest()}


@contextmanager
def explained_write_errors(what: str, directory: Path) -> Iterator[None]:
    """Turn a failed write of `what` into `directory` into a one-line TrainingError when the cause is clear.

    A full disk (ENOSPC, a quota, or a write error with under 1 MiB left) says so; another OSError gives its
    message; anything else propagates unchanged. Either way the message names the newest checkpoint left intact.
    """
    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as error:
        if disk_is_full(error, directory):
            cause, remedy = "the disk is full", "once there is room"
        elif isinstance(error, OSError):
            cause, remedy = str(error), "once this is fixed"
        else:
            raise
        message = f"Could not write {what} in {directory}: {cause}. {_intact_checkpoint_note(directory, remedy)}"
        raise TrainingError(message) from error


def disk_is_full(error: BaseException, directory: Path) -> bool:
    """Whether a failed write failed for want of space: torch and safetensors report ENOSPC in their own ways."""
    if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
        return True
    if any(text in str(error) for text in _DISK_FULL_TEXTS):
        return True
    try:
        return shutil.disk_usage(directory).free < _NEARLY_FULL_BYTES
    except OSError:
        return False


def _intact_checkpoint_note(output_dir: Path, remedy: str) -> str:
    latest = latest_checkpoint(output_dir)
    if latest is None:
        return "There is no earlier checkpoint to resume from."
    return f"The checkpoint {latest} is intact: resume from it with --resume_from_checkpoint latest {remedy}."


def prune_checkpoints(output_dir: str | Path, total_limit: int | None, *, newest_step: int | None = None) -> None:
    """Delete the oldest finished checkpoints so that at most `total_limit` remain (None keeps all).

    With `newest_step` (the checkpoint just written), checkpoints of later steps are neither counted nor deleted:
    they come from before a resume from an earlier checkpoint, and the one just written must never be the one
    that goes.
    """
    if total_limit is None:
        return
    checkpoints = [
        (step, path) for step, path in complete_checkpoints(output_dir) if newest_step is None or step <= newest_step
    ]
    for _, path in checkpoints[: max(0, len(checkpoints) - total_limit)]:
        shutil.rmtree(path)


def write_json(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON (floats round-trip exactly)."""
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_ema_weights(ema: EMAModel, parameter_names: Sequence[str], path: str | Path) -> None:
    """The EMA weights as safetensors, keyed by the model's parameter names."""
    tensors = {
        name: shadow.detach().cpu().contiguous()
        for name, shadow in zip(parameter_names, ema.shadow_params, strict=True)
    }
    save_file(tensors, str(path))


def ema_settings(ema: EMAModel) -> dict[str, Any]:
    """The EMA's scalar state (decay settings and its step count), for JSON."""
    return {key: value for key, value in ema.state_dict().items() if key != "shadow_params"}


def load_ema_state(ema: EMAModel, parameter_names: Sequence[str], path: str | Path, settings: dict[str, Any]) -> None:
    """Restore the EMA from `save_ema_weights` and `ema_settings`, copying into the existing tensors in place."""
    weights = load_file(str(path))
    missing = sorted(set(parameter_names) - set(weights))
    if missing:
        raise ValueError(f"{path} lacks the EMA weights of {', '.join(missing[:5])}.")
    with torch.no_grad():
        for name, shadow in zip(parameter_names, ema.shadow_params, strict=True):
            shadow.copy_(weights[name])
    ema.load_state_dict(settings)


def save_generators(generators: TrainingGenerators, directory: str | Path, process_index: int) -> None:
    save_file(generators.state_tensors(), str(Path(directory) / f"generators_{process_index}.safetensors"))


def load_generators(generators: TrainingGenerators, directory: str | Path, process_index: int) -> None:
    path = Path(directory) / f"generators_{process_index}.safetensors"
    if not path.is_file():
        raise ValueError(f"{path} is missing: the checkpoint was written by fewer processes than this run has.")
    generators.load_state_tensors(load_file(str(path)))
