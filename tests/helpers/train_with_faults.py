"""Run `train_scripts/train.py` with faults injected into `ddpm_plus.training` and each process's work recorded.

In a test, `run_train_script(argv)` runs the script's entry point in the test's process; faults come from
`monkeypatch` with the wrappers below. As a program, this is what `accelerate launch` starts on every process: the
options before `--` set the faults and the record, the rest are the training script's arguments.

    python -m accelerate.commands.launch --multi_gpu --num_processes 2 tests/helpers/train_with_faults.py \\
        --nan_steps 2 --record_dir DIR -- --output_dir runs/x ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import runpy
import signal
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from ddpm_plus.training import ShardedBatchSampler, StepOutput, Trainer

TRAIN_SCRIPT = Path(__file__).resolve().parents[2] / "train_scripts" / "train.py"

TrainStep = Callable[[Trainer, list[torch.Tensor]], StepOutput]
WriteExtraState = Callable[[Trainer, Path], None]
BatchIterator = Callable[[ShardedBatchSampler], Iterator[list[int]]]


def run_train_script(argv: Sequence[str]) -> int:
    """Run the training script in this process, as `python train_scripts/train.py *argv` would; its exit status."""
    saved_argv = sys.argv
    sys.argv = [str(TRAIN_SCRIPT), *argv]
    try:
        runpy.run_path(str(TRAIN_SCRIPT), run_name="__main__")
    except SystemExit as exit_info:
        return exit_info.code
    finally:
        sys.argv = saved_argv
    raise AssertionError(f"{TRAIN_SCRIPT} ended without an exit status.")


def nan_images_at(steps: Collection[int], train_step: TrainStep = Trainer.train_step) -> TrainStep:
    """`Trainer.train_step` (or `train_step`) with NaN images on the last process at optimizer steps `steps` (1, 2,
    ...): the loss is not finite on one process only."""

    def with_nan_images(trainer: Trainer, micro_batches: list[torch.Tensor]) -> StepOutput:
        accelerator = trainer.accelerator
        if trainer.global_step + 1 in steps and accelerator.process_index == accelerator.num_processes - 1:
            micro_batches = [torch.full_like(batch, math.nan) for batch in micro_batches]
        return train_step(trainer, micro_batches)

    return with_nan_images


def killed_while_saving(step: int, write_extra_state: WriteExtraState = Trainer.write_extra_state) -> WriteExtraState:
    """`Trainer.write_extra_state` that SIGKILLs this process once it has written its part of checkpoint `step`: the
    save is cut off before the manifest and the rename, leaving `.checkpoint-<step>.tmp` behind."""

    def write_then_die(trainer: Trainer, directory: Path) -> None:
        write_extra_state(trainer, directory)
        if trainer.global_step == step:
            os.kill(os.getpid(), signal.SIGKILL)

    return write_then_die


class WorkRecorder:
    """Records, for this process, the item indices each optimizer step trained on (`indices_<rank>.jsonl`) and the
    weights and EMA weights after the last step (`weights_<rank>.safetensors`) in `directory`."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.drawn: list[list[int]] = []  # the micro-batches' indices drawn since the last optimizer step

    def batch_iterator(self, iterate: BatchIterator = ShardedBatchSampler.__iter__) -> BatchIterator:
        """`ShardedBatchSampler.__iter__` that keeps the indices it hands out (the loader draws them as it loads)."""

        def recording_iterator(sampler: ShardedBatchSampler) -> Iterator[list[int]]:
            for indices in iterate(sampler):
                self.drawn.append(indices)
                yield indices

        return recording_iterator

    def train_step(self, train_step: TrainStep = Trainer.train_step) -> TrainStep:
        """`Trainer.train_step` (or `train_step`) that records the step's indices, and the weights after the last."""

        def recording_step(trainer: Trainer, micro_batches: list[torch.Tensor]) -> StepOutput:
            rank = trainer.accelerator.process_index
            with (self.directory / f"indices_{rank}.jsonl").open("a") as handle:
                handle.write(json.dumps({"step": trainer.global_step + 1, "indices": self.drawn}) + "\n")
            self.drawn = []
            output = train_step(trainer, micro_batches)
            if trainer.global_step == trainer.max_train_steps:
                save_file(weights(trainer), str(self.directory / f"weights_{rank}.safetensors"))
            return output

        return recording_step


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    """The UNet's state and, as "ema.<name>", the EMA weights."""
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in trainer.unet.state_dict().items()}
    if trainer.ema is not None:
        shadows = zip(trainer.parameter_names(), trainer.ema.shadow_params, strict=True)
        tensors |= {f"ema.{name}": shadow.detach().cpu().contiguous() for name, shadow in shadows}
    return tensors


def parse_fault_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Faults and records; the arguments after -- go to train.py.")
    parser.add_argument("--nan_steps", type=int, nargs="+", default=(), help="NaN images on the last process.")
    parser.add_argument("--kill_while_saving_step", type=int, default=None, help="SIGKILL while saving this step.")
    parser.add_argument("--record_dir", type=Path, default=None, help="Record indices and final weights here.")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    separator = argv.index("--")
    faults = parse_fault_args(argv[:separator])
    train_step = nan_images_at(faults.nan_steps)
    if faults.record_dir is not None:
        faults.record_dir.mkdir(parents=True, exist_ok=True)
        recorder = WorkRecorder(faults.record_dir)
        train_step = recorder.train_step(train_step)
        ShardedBatchSampler.__iter__ = recorder.batch_iterator()
    Trainer.train_step = train_step
    if faults.kill_while_saving_step is not None:
        Trainer.write_extra_state = killed_while_saving(faults.kill_while_saving_step)
    return run_train_script(argv[separator + 1 :])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
