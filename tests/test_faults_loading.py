"""The fault table of loading: every command that loads a model, data, statistics, a checkpoint or a manifest
refuses what cannot be loaded in one line naming the file (exit code 2), before any work, and changes no earlier
output. Each case runs the command as a user does, in a subprocess on the CPU (see tests/faults.py)."""

import json
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from faults import assert_refused_without_change, run_ddpm_plus, run_train, tree_hashes
from helpers import TINY_UNET_CONFIG
from PIL import Image
from pipeline_fixtures import ddpm_unet

from ddpm_plus import DDPMPlusPipeline, DDPMPlusScheduler

WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"
SAMPLE = ["sample", "--num-images", "2", "--steps", "2", "--out", "out/grid.png"]
BPD = ["bpd", "--data", "digits", "--max-images", "2", "--num-timesteps", "full", "--output", "out/bpd.json"]
TRAIN = ["--output_dir", "run", "--model_config", str(TINY_UNET_CONFIG), "--report_to", "none", "--num_threads", "1"]


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved DDPMPlusPipeline of 16x16 RGB images, T = 10, random weights."""
    folder = tmp_path_factory.mktemp("faults-loading") / "model"
    torch.manual_seed(0)
    DDPMPlusPipeline(ddpm_unet(), DDPMPlusScheduler(num_train_timesteps=10)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def unimportable_torch_fidelity(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose `torch_fidelity` fails when imported: `ddpm-plus fid` finds the extra (it looks it up without
    importing it), so its checks run; a command that reached its features would fail on the import."""
    folder = tmp_path_factory.mktemp("stubs")
    (folder / "torch_fidelity").mkdir()
    (folder / "torch_fidelity" / "__init__.py").write_text(
        'raise ImportError("torch_fidelity was imported before the inputs were checked")\n'
    )
    return folder


# --------------------------------------------------------------------------------------------- what the cases make


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def other_pipeline_kind(model: Path) -> None:
    """A Stable Diffusion folder's model_index.json: a conditional UNet, a VAE, a text encoder."""

    def describe(index: dict) -> None:
        index.update(_class_name="StableDiffusionPipeline", unet=["diffusers", "UNet2DConditionModel"])
        index.update(vae=["diffusers", "AutoencoderKL"], text_encoder=["transformers", "CLIPTextModel"])

    edit_json(model / "model_index.json", describe)


def truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_oversized_png(path: Path, side: int = 20_000) -> None:
    """A PNG whose header says side x side pixels (4·10⁸, over PIL's limit of 2 x 89,478,485); PIL refuses it when
    it opens the header, so its pixel data need not exist."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    chunks = png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"")) + png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


def write_images(folder: Path, sizes: list[int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, size in enumerate(sizes):
        Image.fromarray(np.full((size, size, 3), 40 * index, np.uint8)).save(folder / f"{index}.png")
    return folder


def write_statistics(path: Path, dim_mu: int, dim_sigma: int) -> Path:
    np.savez(path, mu=np.zeros(dim_mu), sigma=np.eye(dim_sigma))
    return path


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_checkpoint_with_corrupt_manifest(run: Path) -> None:
    write_text(run / "checkpoint-1" / "training_state.json", "{}")
    write_text(run / "checkpoint-1" / "manifest.json", '{"format": 1, "files": ')


@dataclass(frozen=True)
class Fault:
    """A command (`ddpm-plus` or the training script), what `prepare(case folder, model)` puts in place before it
    runs, and a fragment of the one line that must refuse it."""

    tool: str
    args: list[str]
    prepare: Callable[[Path, Path], None]
    fragment: str


def nothing(case: Path, model: Path) -> None:
    """The case needs only the model and the earlier output."""


FAULTS = {
    # a model folder that does not load
    "sample: a folder of another pipeline kind": Fault(
        "ddpm-plus", [*SAMPLE, "--model", "model"], lambda case, model: other_pipeline_kind(model),
        "model_index.json describes a StableDiffusionPipeline with components scheduler, text_encoder, unet, vae",
    ),
    "sample: no model_index.json": Fault(
        "ddpm-plus", [*SAMPLE, "--model", "model"], lambda case, model: (model / "model_index.json").unlink(),
        "--model model: model/model_index.json is missing",
    ),
    "sample: a corrupt model_index.json": Fault(
        "ddpm-plus", [*SAMPLE, "--model", "model"], lambda case, model: truncate(model / "model_index.json", 30),
        "model/model_index.json cannot be read (truncated or corrupt",
    ),
    "bpd: a corrupt unet/config.json": Fault(
        "ddpm-plus", [*BPD, "--model", "model"], lambda case, model: truncate(model / "unet" / "config.json", 50),
        "model/unet/config.json cannot be read (truncated or corrupt",
    ),
    "sample: truncated weights": Fault(
        "ddpm-plus", [*SAMPLE, "--model", "model"], lambda case, model: truncate(model / WEIGHTS, 100_000),
        f"model/{WEIGHTS} is not a complete safetensors file (truncated or corrupt",
    ),
    "bpd: no weights": Fault(
        "ddpm-plus", [*BPD, "--model", "model"], lambda case, model: (model / WEIGHTS).unlink(),
        "model/unet has no weights (diffusion_pytorch_model.safetensors or .bin)",
    ),
    "sample: a missing scheduler": Fault(
        "ddpm-plus", [*SAMPLE, "--model", "model"], lambda case, model: shutil.rmtree(model / "scheduler"),
        "model/scheduler/scheduler_config.json is missing",
    ),
    "bpd: an uncached Hub id offline": Fault(
        "ddpm-plus", [*BPD, "--model", "someone/uncached-ddpm"], nothing,
        "someone/uncached-ddpm: no such folder, and the Hub id is not in the local Hub cache",
    ),
    # data, statistics and archives
    "bpd: a data path that does not exist": Fault(
        "ddpm-plus", [*BPD, "--model", "model", "--data", "./no/such/images"], nothing,
        "The data source ./no/such/images is no folder, and no 🤗 dataset of that name can be loaded",
    ),
    "fid: an .npz without arr_0": Fault(
        "ddpm-plus", ["fid", "--samples", "mu-only.npz", "--reference", "digits", "--cache-dir", "out/cache"],
        lambda case, model: np.savez(case / "mu-only.npz", mu=np.zeros(4)),
        "mu-only.npz has no array arr_0 (it holds mu)",
    ),
    "fid: statistics whose mu and sigma disagree": Fault(
        "ddpm-plus", ["fid", "--samples", "stats.npz", "--reference", "ref.npz", "--cache-dir", "out/cache"],
        lambda case, model: (write_statistics(case / "stats.npz", 4, 3), write_statistics(case / "ref.npz", 4, 4)),
        "stats.npz: mu has shape (4,) and sigma (3, 3)",
    ),
    "fid: an archive of 0 images": Fault(
        "ddpm-plus", ["fid", "--samples", "empty.npz", "--reference", "digits", "--cache-dir", "out/cache"],
        lambda case, model: np.savez(case / "empty.npz", arr_0=np.zeros((0, 8, 8, 1), np.uint8)),
        "--samples holds 0 images; the covariance of the features needs at least 2",
    ),
    "fid: an image folder of mixed sizes": Fault(
        "ddpm-plus", ["fid", "--samples", "images", "--reference", "digits", "--cache-dir", "out/cache"],
        lambda case, model: write_images(case / "images", [8, 8, 12]),
        "Image folder images holds images of different sizes (images/0.png is 8x8, images/2.png is 12x12)",
    ),
    # devices, checked before the model loads
    "sample: --device nonsense": Fault(
        "ddpm-plus", [*SAMPLE, "--model", "model", "--device", "nonsense"], nothing,
        "--device nonsense is not a torch device",
    ),
    "bpd: --device cuda without CUDA": Fault(
        "ddpm-plus", [*BPD, "--model", "model", "--device", "cuda"], nothing,
        "--device cuda: this machine has no cuda device that torch can use",
    ),
    "fid: --device cuda:7 without CUDA": Fault(
        "ddpm-plus", ["fid", "--samples", "digits", "--reference", "digits", "--device", "cuda:7"], nothing,
        "--device cuda:7: this machine has no cuda device",
    ),
    # valid but unusual input
    "bpd: an image over PIL's size limit": Fault(
        "ddpm-plus", [*BPD, "--model", "model", "--data", "images", "--split", "train"],
        lambda case, model: (write_images(case / "images", [16]), write_oversized_png(case / "images" / "big.png")),
        "images/big.png: it is too large for PIL",
    ),
    "sample: a negative --seed": Fault(
        "ddpm-plus", [*SAMPLE, "--model", "model", "--seed", "-1"], nothing,
        "--seed must lie in 0..18446744073709551614 (it seeds 2 images, seed + i for image i), got -1",
    ),
    "bpd: --seed 2**64": Fault(
        "ddpm-plus", [*BPD, "--model", "model", "--seed", str(2**64)], nothing,
        "--seed must lie in 0..18446744073709551615, got 18446744073709551616",
    ),
    "sample: a corrupt manifest.json": Fault(
        "ddpm-plus", [*SAMPLE, "--model", "model"],
        lambda case, model: write_text(case / "out" / "grid" / "manifest.json", "{"),
        "out/grid/manifest.json cannot be read (truncated or corrupt",
    ),
    "bpd: corrupt settings of partial results": Fault(
        "ddpm-plus", [*BPD, "--model", "model"],
        lambda case, model: write_text(case / "out" / "bpd.json.partial" / "settings.json", "[1,"),
        "out/bpd.json.partial/settings.json cannot be read (truncated or corrupt",
    ),
    # the training script
    "train: --pretrained_model_name_or_path with truncated weights": Fault(
        "train", ["--output_dir", "run", "--pretrained_model_name_or_path", "model"],
        lambda case, model: truncate(model / WEIGHTS, 100),
        f"--pretrained_model_name_or_path model: model/{WEIGHTS} is not a complete safetensors file",
    ),
    "train: --train_data_dir that does not exist": Fault(
        "train", [*TRAIN, "--train_data_dir", "no-such-images"], nothing,
        "The data source no-such-images is no folder, and no 🤗 dataset of that name can be loaded",
    ),
    "train: a corrupt --model_config_name_or_path": Fault(
        "train", ["--output_dir", "run", "--model_config_name_or_path", "unet.json"],
        lambda case, model: write_text(case / "unet.json", '{"sample_size": 16,'),
        "unet.json cannot be read (truncated or corrupt",
    ),
    "train: --resume_from_checkpoint with a corrupt manifest": Fault(
        "train", [*TRAIN, "--resume_from_checkpoint", "run/checkpoint-1"],
        lambda case, model: write_checkpoint_with_corrupt_manifest(case / "run"),
        "run/checkpoint-1/manifest.json cannot be read (truncated or corrupt",
    ),
    "train: --seed 2**64": Fault("train", [*TRAIN, "--seed", str(2**64)], nothing, "--seed must lie in 0.."),
}  # fmt: skip


@pytest.mark.parametrize("name", FAULTS)
def test_a_load_fault_is_one_line_before_any_work(
    name: str, saved_pipeline: Path, unimportable_torch_fidelity: Path, tmp_path: Path
) -> None:
    fault = FAULTS[name]
    model = shutil.copytree(saved_pipeline, tmp_path / "model")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "earlier.json").write_text('{"an earlier output": true}')
    fault.prepare(tmp_path, model)
    before = tree_hashes(tmp_path)
    if fault.tool == "train":
        result = run_train(*fault.args, cwd=tmp_path)
    else:
        result = run_ddpm_plus(*fault.args, cwd=tmp_path, python_path=[unimportable_torch_fidelity])
    assert_refused_without_change(result, fault.fragment, before, tmp_path)
