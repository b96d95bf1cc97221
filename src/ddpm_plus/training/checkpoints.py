"""Checkpoints: `Accelerator.save_state` plus our own state (EMA, timestep sampler, step, generators), written to a
temporary directory and renamed when complete, so that an interrupted save never becomes the latest checkpoint. A
manifest (size and SHA-256 of every file), written last, lets a resume verify a checkpoint before loading it; "latest"
falls back to the newest checkpoint that verifies."""

from __future__ import annotations

import errno
import hashlib
import json
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
from ddpm_plus.utils import read_json_object, write_json

if TYPE_CHECKING:
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel

    from ddpm_plus.training.objective import TrainingGenerators

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
    files = _manifest_files(manifest_path)
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


def _manifest_files(manifest_path: Path) -> dict[str, dict[str, Any]]:
    """The `files` of a manifest (name -> size and SHA-256); a CheckpointError naming it when it is corrupt."""
    files = read_json_object(manifest_path, CheckpointError).get("files")
    entries_valid = isinstance(files, dict) and all(
        isinstance(entry, dict) and {"size", "sha256"} <= entry.keys() for entry in files.values()
    )
    if not entries_valid:
        raise CheckpointError(f"{manifest_path} is corrupt: it lists no files with their size and sha256.")
    return files


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


def prepare_output_dir(output_dir: str | Path, accelerator: Accelerator) -> None:
    """Create `output_dir` (once nothing can fail on bad input) and remove the checkpoint saves that a kill
    interrupted, logging each; call on every process."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        for path in remove_unfinished_checkpoints(output_dir):
            message = f"Removed {path}, the unfinished checkpoint of an interrupted save."
            log_on_main_process(__name__, logging.INFO, message)
    accelerator.wait_for_everyone()


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
