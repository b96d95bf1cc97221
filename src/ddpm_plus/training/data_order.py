"""Data order: a deterministic, resumable sharding of every epoch into optimizer steps, micro-batches and processes."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ddpm_plus.utils import derived_seed


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
) -> Iterator[list[torch.Tensor]]:
    """Yield this process's micro-batches of each optimizer step, from global step `first_step` on.

    Epochs follow one another without end; the caller stops. Each epoch's loader gets its own seeded generator,
    so workers' seeds and the position in the data depend only on the step, not on what ran before a resume.
    """
    epoch, step_in_epoch = divmod(first_step, sampler.steps_per_epoch)
    while True:
        sampler.set_position(epoch, step_in_epoch)
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=num_workers,
            pin_memory=pin_memory,
            generator=torch.Generator().manual_seed(derived_seed(sampler.seed, sampler.process_index, epoch)),
        )
        micro_batches: list[torch.Tensor] = []
        for images in loader:
            micro_batches.append(images)
            if len(micro_batches) == sampler.accumulation_steps:
                yield micro_batches
                micro_batches = []
        epoch, step_in_epoch = epoch + 1, 0
