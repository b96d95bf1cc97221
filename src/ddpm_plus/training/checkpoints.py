"""Checkpoints: `Accelerator.save_state` plus our own state (EMA, timestep sampler, step, generators), written to a
temporary directory and renamed when complete, so that an interrupted save never becomes the latest checkpoint. A
manifest, written last, records the checkpoint's identity (its step and the run settings that resuming depends on)
and the size and SHA-256 of every file; a resume verifies a checkpoint against it before loading it, and "latest"
falls back to the newest checkpoint that verifies. Also the output folder's state: what an earlier run left in it,
the temporaries of interrupted saves, and the final pipeline, saved atomically."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ddpm_plus.training.errors import CheckpointError, TrainingError
from ddpm_plus.training.launch import log_on_main_process
from ddpm_plus.training.step import all_finite
from ddpm_plus.utils import atomic_entries, first_difference, read_json_object, write_json

if TYPE_CHECKING:
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel

    from ddpm_plus.pipeline_ddpm_plus import DDPMPlusPipeline
    from ddpm_plus.training.objective import TrainingGenerators

CHECKPOINT_PREFIX = "checkpoint-"
TRAINING_STATE_FILE = "training_state.json"
EMA_WEIGHTS_FILE = "ema.safetensors"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 2  # 1: files only; 2: also the step and the run signature
PIPELINE_INDEX_FILE = "model_index.json"  # what makes a folder a saved pipeline; renamed into place last
_PIPELINE_STAGING = "pipeline"  # `.pipeline.tmp` and `.pipeline.old` while the final pipeline is exchanged
_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")
_TEMPORARY_SUFFIX = ".tmp"
_TEMPORARY_NAME = re.compile(rf"\.checkpoint-\d+\.tmp|\.{_PIPELINE_STAGING}\.(tmp|old)")
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", f"os error {errno.ENOSPC}")
_NEARLY_FULL_BYTES = 1 << 20  # a write that fails with less than this left on its disk failed for want of space


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
    when checkpoints exist but none verifies. A given directory that does not verify (a bad file, or an identity
    that disagrees with its manifest or its name) is a CheckpointError naming the fault.
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
    """Check a finished checkpoint before it is loaded; CheckpointError naming the first bad file or the identity
    that disagrees.

    Returns True when every file matches the size and SHA-256 of the manifest, False for a checkpoint written before
    manifests existed: then only its structure is checked (its JSON files parse, its safetensors headers are
    complete). Either way the step in its folder name, in its manifest (from format 2) and in its training state
    must agree, and so must the run signatures of its manifest and its training state.
    """
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        _check_structure(path)
        _check_identity(path, {})
        return False
    manifest = read_json_object(manifest_path, CheckpointError)
    _check_files(path, _manifest_files(manifest_path, manifest))
    _check_identity(path, manifest)
    return True


def _check_files(path: Path, files: dict[str, dict[str, Any]]) -> None:
    """CheckpointError unless every file of the manifest has its recorded size and SHA-256."""
    manifest_path = path / MANIFEST_FILE
    for name, expected in files.items():  # sizes first: cheap, and they catch truncation
        size = (path / name).stat().st_size if (path / name).is_file() else None
        if size is None:
            raise CheckpointError(f"{path / name} is missing from the checkpoint.")
        if size != expected["size"]:
            raise CheckpointError(f"{path / name} has {size} bytes, its manifest records {expected['size']}.")
    for name, expected in files.items():
        if _fingerprint(path / name)["sha256"] != expected["sha256"]:
            raise CheckpointError(f"{path / name} does not match its SHA-256 checksum in {manifest_path}.")


def _check_identity(path: Path, manifest: dict[str, Any]) -> None:
    """CheckpointError when the folder name, the manifest and the training state disagree about the step, or the
    manifest and the training state about the run signature (a renamed or copied checkpoint, an edited manifest)."""
    state = read_json_object(path / TRAINING_STATE_FILE, CheckpointError)
    step = state.get("global_step")
    named = _CHECKPOINT_NAME.fullmatch(path.name)
    if named and step is not None and int(named.group(1)) != step:
        raise CheckpointError(
            f"{path} is named for step {named.group(1)} but holds step {step} (renamed or copied); it is not "
            "resumed from under another step's name."
        )
    if "step" in manifest and manifest["step"] != step:
        raise CheckpointError(
            f"{path / MANIFEST_FILE} records step {manifest['step']}, but {TRAINING_STATE_FILE} holds step {step}."
        )
    difference = first_difference(manifest["run"], state.get("run", {})) if "run" in manifest else None
    if difference is not None:
        raise CheckpointError(
            f"{path / MANIFEST_FILE} records other run settings than {TRAINING_STATE_FILE} ({difference})."
        )


def _check_structure(path: Path) -> None:
    """CheckpointError unless the JSON files of a checkpoint parse and its safetensors files are complete and finite
    (earlier versions could checkpoint the weights of a diverged run)."""
    for file in sorted(path.rglob("*.json")):
        read_json_object(file, CheckpointError)
    for file in sorted(path.rglob("*.safetensors")):
        try:
            tensors = load_file(str(file))
        except SafetensorError as error:
            raise CheckpointError(f"{file} is not a complete safetensors file ({error}).") from None
        if not all_finite(tensor for tensor in tensors.values() if tensor.is_floating_point()):
            raise CheckpointError(f"{file} holds non-finite values (saved after the run diverged).")


def _manifest_files(manifest_path: Path, manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The `files` of a manifest (name -> size and SHA-256); a CheckpointError naming it when it is corrupt."""
    files = manifest.get("files")
    entries_valid = isinstance(files, dict) and all(
        isinstance(entry, dict) and {"size", "sha256"} <= entry.keys() for entry in files.values()
    )
    if not entries_valid:
        raise CheckpointError(f"{manifest_path} is corrupt: it lists no files with their size and sha256.")
    return files


def remove_unfinished_checkpoints(output_dir: str | Path) -> list[Path]:
    """Delete the temporary directories of checkpoint and pipeline saves that were interrupted (killed); returns
    them. Call only while holding the folder's lock: then no live run is writing them."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    unfinished = sorted(path for path in output_dir.iterdir() if _TEMPORARY_NAME.fullmatch(path.name))
    for path in unfinished:
        shutil.rmtree(path)
    return unfinished


@dataclass
class EarlierRun:
    """The finished work of an earlier run in an output folder: its checkpoints, and whether it saved a pipeline."""

    checkpoints: list[Path]
    pipeline: bool

    def __str__(self) -> str:
        parts = []
        if self.checkpoints:
            parts.append(f"the checkpoints {', '.join(path.name for path in self.checkpoints)}")
        if self.pipeline:
            parts.append("a saved pipeline")
        return " and ".join(parts)


def check_new_run(output_dir: str | Path, resume_from: str | None, overwrite: bool) -> EarlierRun | None:
    """The earlier run that a new run replaces in `output_dir` with `overwrite` (--overwrite_output_dir), or None;
    without `overwrite`, a ValueError when there is one. A run is new without `resume_from`, and with "latest" when
    there is no checkpoint to resume from."""
    output_dir = Path(output_dir)
    earlier = EarlierRun(
        [path for _, path in complete_checkpoints(output_dir)], (output_dir / PIPELINE_INDEX_FILE).is_file()
    )
    resumes = resume_from is not None and (resume_from != "latest" or bool(earlier.checkpoints))
    if resumes or not (earlier.checkpoints or earlier.pipeline):
        return None
    if resume_from is not None:
        raise ValueError(
            f"--output_dir {output_dir} holds {earlier} of an earlier run but no checkpoint to resume from; give "
            "another --output_dir, or pass --overwrite_output_dir instead of --resume_from_checkpoint to replace that "
            "run with a new one."
        )
    if not overwrite:
        raise ValueError(
            f"--output_dir {output_dir} holds {earlier} of an earlier run; continue it with --resume_from_checkpoint "
            "latest, or pass --overwrite_output_dir to replace that run with a new one."
        )
    return earlier


def prepare_output_dir(output_dir: str | Path, accelerator: Accelerator, replaced: EarlierRun | None = None) -> None:
    """Create `output_dir` (once nothing can fail on bad input), remove the saves that a kill interrupted, and log
    each, and what `replaced` (the earlier run of --overwrite_output_dir) will lose; call on every process, with
    the folder's lock held."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        for path in remove_unfinished_checkpoints(output_dir):
            what = "pipeline" if path.name.startswith(f".{_PIPELINE_STAGING}.") else "checkpoint"
            message = f"Removed {path}, the unfinished {what} of an interrupted save."
            log_on_main_process(__name__, logging.INFO, message)
        if replaced is not None:
            message = (
                f"--overwrite_output_dir: this run replaces {replaced} of an earlier run in {output_dir}; they are "
                "removed when it writes its first checkpoint (or, without checkpoints, its pipeline), the pipeline "
                "when it saves its own."
            )
            log_on_main_process(__name__, logging.WARNING, message)
    accelerator.wait_for_everyone()


def remove_replaced_checkpoints(replaced: EarlierRun, keep: Path | None = None) -> list[Path]:
    """Delete the checkpoints of the earlier run that --overwrite_output_dir replaces, but `keep` (the checkpoint
    this run has just written under the same name); returns those deleted. Call on the main process."""
    removed = [path for path in replaced.checkpoints if path != keep and path.is_dir()]
    for path in removed:
        shutil.rmtree(path)
    replaced.checkpoints = []
    return removed


def save_pipeline(pipeline: DDPMPlusPipeline, output_dir: str | Path) -> None:
    """`pipeline.save_pretrained` into a temporary folder in `output_dir`, whose entries then replace those of an
    earlier pipeline by renames, model_index.json last: a failed write (a full disk) leaves the earlier pipeline and
    the checkpoints as they were, and no folder ever holds a half-written pipeline."""
    with atomic_entries(output_dir, _PIPELINE_STAGING, last=PIPELINE_INDEX_FILE) as temporary:
        pipeline.save_pretrained(temporary)


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | Path,
    step: int,
    write_extra_state: Callable[[Path], None],
    *,
    run: dict[str, Any],
    total_limit: int | None = None,
) -> Path:
    """Write checkpoint `checkpoint-<step>` of the run of signature `run` atomically; call on every process.

    Everything (accelerate's state, then `write_extra_state(directory)` on every process) goes to a temporary
    directory. Once all files are written, the main process flushes them to disk, records the step, `run` and the
    files' sizes and SHA-256 in the manifest (the last file written) and renames the directory. Older checkpoints
    beyond `total_limit` are then removed. A failed write removes the temporary directory and leaves the earlier
    checkpoints as they were; a full disk or another OSError becomes a one-line TrainingError.
    """
    output_dir = Path(output_dir)
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    temporary = output_dir / f".{final.name}{_TEMPORARY_SUFFIX}"
    try:
        with explained_write_errors(f"checkpoint {final.name}", output_dir):
            _write_checkpoint(accelerator, temporary, write_extra_state, {"step": step, "run": run})
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


def _write_checkpoint(
    accelerator: Accelerator,
    temporary: Path,
    write_extra_state: Callable[[Path], None],
    identity: dict[str, Any],
) -> None:
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
        write_json(temporary / MANIFEST_FILE, {"format": MANIFEST_FORMAT, **identity, "files": files})
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
    """The states of this process's random streams, in a file of its own."""
    save_file(generators.state_tensors(), str(_generators_file(directory, process_index)))


def load_generators(generators: TrainingGenerators, directory: str | Path, process_index: int) -> None:
    """Restore this process's random streams from `save_generators`."""
    path = _generators_file(directory, process_index)
    if not path.is_file():
        raise ValueError(f"{path} is missing: the checkpoint was written by fewer processes than this run has.")
    generators.load_state_tensors(load_file(str(path)))


def _generators_file(directory: str | Path, process_index: int) -> Path:
    return Path(directory) / f"generators_{process_index}.safetensors"
