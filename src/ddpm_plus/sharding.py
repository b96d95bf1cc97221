"""Evaluation work shared by the processes of `accelerate launch`: who does which items, and how results meet.

A command run as `accelerate launch [--multi_gpu --num_processes N] -m ddpm_plus.cli ...` joins one process group
(gloo on CPUs, NCCL on GPUs) through `ddpm_plus.training.launch.create_accelerator`; the same command run plainly
is the 1-process case and needs no accelerate at all. Work is split by item (an image index, a chunk of images),
never by random stream, so results do not depend on the number of processes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from tqdm.auto import tqdm

from ddpm_plus.utils import atomic_path, first_difference, read_json_object, write_json

if TYPE_CHECKING:
    from accelerate import Accelerator

    from ddpm_plus.pipeline_ddpm_plus import DDPMPlusPipeline

Item = TypeVar("Item")
Result = TypeVar("Result")
SEEDING = "image i: noise from torch.Generator().manual_seed(seed + i)"


@dataclass(frozen=True)
class Processes:
    """The processes of one command: this one's `index` among `count`, and the accelerator that connects them
    (None for a single process)."""

    index: int = 0
    count: int = 1
    accelerator: Accelerator | None = None

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def share(self, items: Sequence[Item]) -> list[Item]:
        """This process's share of `items`: every `count`-th one from its index (sizes differ by at most one)."""
        return list(items[self.index :: self.count])

    def gather(self, share: Sequence[Item]) -> list[Item]:
        """On every process, the items of all shares in the order of the sequence that `share` split: the inverse of
        `share`, given each process's whole share (picklable items)."""
        shares = self._all_lists(share)
        return [shares[position % self.count][position // self.count] for position in range(sum(map(len, shares)))]

    def concatenate(self, items: Sequence[Item]) -> list[Item]:
        """On every process, the items of all processes, in the order of their indices (picklable items)."""
        return [item for part in self._all_lists(items) for item in part]

    def _all_lists(self, items: Sequence[Item]) -> list[list[Item]]:
        if self.accelerator is None:
            return [list(items)]
        from accelerate.utils import gather_object

        return gather_object([list(items)])

    def wait_for_everyone(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def device(self, requested: str) -> torch.device:
        """The torch device for a `--device` option: with several processes, each takes its own accelerator device
        (`cuda:<local rank>`) for a GPU request; otherwise the requested device."""
        device = torch.device(requested)
        if self.accelerator is not None and device.type != "cpu":
            return self.accelerator.device
        return device


def default_device(requested: str | None) -> str:
    """The device of an evaluation command: `--device` as given (checked by `check_device`), else cuda when
    available, else cpu."""
    if requested is not None:
        check_device(requested)
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(requested: str, option: str = "--device") -> None:
    """Raise a `ValueError` naming `option` unless `requested` is a torch device that this machine has: a known
    device type whose backend is available, with an index below its device count."""
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"{option} {requested} is not a torch device (e.g. cpu, cuda, cuda:1, mps).") from None
    if device.type == "cpu":
        return
    backend = torch.backends.mps if device.type == "mps" else getattr(torch, device.type, None)
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        raise ValueError(f"{option} {requested}: this machine has no {device.type} device that torch can use.")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if device.index is not None and device.index >= count:
        raise ValueError(
            f"{option} {requested}: this machine has {count} {device.type} device{'s' if count > 1 else ''} "
            f"({device.type}:0 to {device.type}:{count - 1})."
        )


@contextmanager
def launched_processes(*, cpu: bool, num_threads: int | None = None) -> Iterator[Processes]:
    """The processes that the launcher started: a single `Processes()` when it started one (no accelerate needed),
    else this process's place in their group, which is left without gloo's exit hang (`process_group_lifetime`).
    Each process runs `num_threads` torch threads, by default the CPU cores divided among this machine's processes
    (as training does).

    Args:
        cpu: join the group on CPUs (gloo), even where a GPU is present.
        num_threads: torch threads per process (`--num-threads`).
    """
    from ddpm_plus.training.launch import torch_threads_per_process

    threads = torch.get_num_threads()
    torch.set_num_threads(torch_threads_per_process(num_threads))
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            yield Processes()
            return
        from ddpm_plus.training.launch import create_accelerator, process_group_lifetime

        accelerator = create_accelerator(cpu=cpu)
        with process_group_lifetime(accelerator):
            yield Processes(accelerator.process_index, accelerator.num_processes, accelerator)
    finally:
        torch.set_num_threads(threads)  # as the caller had it (commands also run in-process)


class SharedProgress:
    """A progress bar, on the main process only, of work shared by all processes, in items/s with an ETA: the main
    process's share, scaled to the whole (the shares differ by at most one chunk)."""

    def __init__(self, processes: Processes, total: int, own_total: int, desc: str, unit: str = "img"):
        self._bar = tqdm(total=total, desc=desc, unit=unit, disable=not processes.is_main)
        self._scale = total / max(1, own_total)
        self._done = 0

    def advance(self, count: int) -> None:
        """Count `count` more items done by this process."""
        self._done += count
        self._bar.update(round(self._done * self._scale) - self._bar.n)

    def __enter__(self) -> SharedProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bar.close()


def chunks_of(count: int, size: int) -> list[range]:
    """Consecutive chunks of `size` items (the last one may be shorter) that cover range(count)."""
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


class ChunkStore:
    """The results of finished chunks, one safetensors file each in `directory`, so that a rerun after a kill
    computes only the others. A result is a dataclass whose fields are tensors, None or JSON values; tensors keep
    their exact bits. The folder remembers the settings it was made with (`settings.json`); results made with
    other settings are refused with a `ValueError`, never mixed, or with `replace` removed."""

    SETTINGS_FILE = "settings.json"

    def __init__(self, directory: Path, settings: dict[str, Any], processes: Processes, *, replace: bool = False):
        self.directory = directory
        path = directory / self.SETTINGS_FILE
        recorded = read_json_object(path) if path.is_file() else settings
        stale = recorded != settings
        if stale and not replace:
            difference = first_difference(recorded, settings) or "more settings recorded there"
            raise ValueError(
                f"{directory} holds partial results of other settings ({difference}); pass --overwrite to replace "
                f"them, or rerun with the settings in {path}."
            )
        processes.wait_for_everyone()  # every process has read the settings before the main one replaces them
        if processes.is_main:
            if stale:
                shutil.rmtree(directory)
            write_json(path, settings)
        if stale:
            processes.wait_for_everyone()  # no process reads a stale result

    def _path(self, chunk: range) -> Path:
        return self.directory / f"chunk-{chunk.start:08d}-{chunk.stop:08d}.safetensors"

    def load(self, chunk: range, kind: type[Result]) -> Result | None:
        """The stored result of `chunk` as a `kind`, or None when it was not finished."""
        from safetensors import safe_open

        path = self._path(chunk)
        if not path.is_file():
            return None
        with safe_open(path, framework="pt") as file:
            values = json.loads(file.metadata()["values"])
            values.update({name: file.get_tensor(name) for name in file.keys()})
        return kind(**values)

    def save(self, chunk: range, result: Any) -> None:
        from safetensors.torch import save_file

        fields = {field.name: getattr(result, field.name) for field in dataclasses.fields(result)}
        tensors = {name: value.contiguous() for name, value in fields.items() if isinstance(value, torch.Tensor)}
        values = {name: value for name, value in fields.items() if not isinstance(value, torch.Tensor)}
        with atomic_path(self._path(chunk)) as temporary:
            save_file(tensors, temporary, metadata={"values": json.dumps(values)})


def map_chunks(
    processes: Processes,
    chunks: Sequence[range],
    compute: Callable[[range], Result],
    kind: type[Result],
    *,
    desc: str,
    store: ChunkStore | None = None,
) -> list[Result]:
    """`compute(chunk)` for every chunk, in chunk order, on every process: each process computes its share of the
    chunks that `store` does not hold yet (and stores them), then the results are gathered."""
    stored = {chunk: store.load(chunk, kind) for chunk in chunks} if store is not None else {}
    processes.wait_for_everyone()  # every process has read the store before any writes to it: the same `missing`
    missing = [chunk for chunk in chunks if stored.get(chunk) is None]
    mine = processes.share(missing)
    results = []
    with SharedProgress(processes, sum(map(len, missing)), sum(map(len, mine)), desc) as progress:
        for chunk in mine:
            results.append(compute(chunk))
            if store is not None:
                store.save(chunk, results[-1])
            progress.advance(len(chunk))
    computed = dict(zip(missing, processes.gather(results), strict=True))
    return [computed[chunk] if stored.get(chunk) is None else stored[chunk] for chunk in chunks]


def sample_images(
    pipeline: DDPMPlusPipeline,
    indices: range,
    *,
    seed: int,
    num_inference_steps: int,
    stochasticity: float | None = None,
    output_type: str = "pil",
    class_label: int | None = None,
    timestep_respacing: str | None = None,
) -> Any:
    """Images `indices` of a sampling run, in one network batch: image i starts from the noise of a CPU generator
    seeded with `seed + i` (`SEEDING`), so it does not depend on which process makes it, nor with which others.
    A class-conditional model makes every image of `class_label`; `timestep_respacing` replaces
    `num_inference_steps` (see `DDPMPlusPipeline.__call__`)."""
    generators = [torch.Generator().manual_seed(seed + index) for index in indices]
    return pipeline(
        batch_size=len(indices),
        generator=generators,
        num_inference_steps=num_inference_steps,
        stochasticity=stochasticity,
        output_type=output_type,
        class_labels=class_label,
        timestep_respacing=timestep_respacing,
    ).images
