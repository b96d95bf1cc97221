"""The fault table, part 2: requests bounded before work, any path handled or refused, and settings without effect
or with a nonsensical value refused. Each case runs the command as a user would (a subprocess) into a location
that already holds an earlier output, and checks the outcome and that the earlier output is unchanged."""

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from faults import assert_refused_without_change, run_ddpm_plus, run_train, tree_hashes
from pipeline_fixtures import SCHEDULER_CONFIG, tiny_unet

from ddpm_plus import DDPMPlusPipeline, DDPMPlusScheduler
from ddpm_plus.cli_fid import check_request
from ddpm_plus.image_sources import ArchiveImages

TINY_TRAINING = ["--model_config", str(Path(__file__).parent / "helpers" / "tiny_unet.json"), "--report_to", "none"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A saved tiny pipeline (8x8 RGB, T = 20)."""
    directory = tmp_path_factory.mktemp("model") / "tiny"
    DDPMPlusPipeline(unet=tiny_unet(), scheduler=DDPMPlusScheduler(**SCHEDULER_CONFIG)).save_pretrained(directory)
    return directory


@pytest.fixture
def earlier(tmp_path) -> Path:
    """A folder with an earlier run's output in it, which no refused command may change."""
    folder = tmp_path / "outputs"
    folder.mkdir()
    (folder / "earlier.json").write_text('{"bits_per_dim": 2.6}')
    return folder


@dataclass(frozen=True)
class Case:
    kind: str  # "ddpm-plus" or "train"
    arguments: tuple[str, ...]
    message: str


CASES = {
    # requests bounded before work (memory and disk, naming the number and the limit)
    "sample --num-images 10^12 (disk)": Case(
        "ddpm-plus", ("sample", "--model", "MODEL", "--num-images", "1000000000000", "--out", "OUT/grid.png"),
        "--num-images 1000000000000 of 8x8x3 (the .npz archive alone) needs at least 192.0 TB of disk"),
    "bpd --batch-size 10^12 (memory)": Case(
        "ddpm-plus", ("bpd", "--model", "MODEL", "--data", "digits", "--batch-size", "1000000000000",
                      "--output", "OUT/bpd.json"), "with --batch-size 1000000000000 needs at least"),
    "train --resolution 65536 (memory)": Case(
        "train", ("--output_dir", "OUT", *TINY_TRAINING, "--resolution", "65536"),
        "--train_batch_size 64 at --resolution 65536 needs at least"),
    "train --eval_batch_size 10^12 (memory)": Case(
        "train", ("--output_dir", "OUT", *TINY_TRAINING, "--eval_batch_size", "1000000000000"),
        "--eval_batch_size 1000000000000 at --resolution 16 needs at least"),
    "sample --steps beyond T (no manifest written, no sampling started)": Case(
        "ddpm-plus", ("sample", "--model", "MODEL", "--steps", "50", "--out", "OUT/grid.png"),
        "--steps 50 exceeds the model's 20 training timesteps"),
    "sample --out a folder": Case(
        "ddpm-plus", ("sample", "--model", "MODEL", "--out", "OUT"), "must be a .png file, got OUT, a directory"),
    # paths: refused before work when logs, manifests and cards could not carry them
    "train --output_dir not UTF-8": Case(
        "train", ("--output_dir", "OUT/run-\udcff", *TINY_TRAINING), "is not UTF-8 text"),
    "sample --out with a line break": Case(
        "ddpm-plus", ("sample", "--model", "MODEL", "--out", "OUT/a\nb.png"), "contains a control character"),
    "bpd --plot not UTF-8": Case(
        "ddpm-plus", ("bpd", "--model", "MODEL", "--plot", "OUT/\udce9.png"), "--plot b'"),
    # settings with a nonsensical value, or without effect
    "train --vlb_weight -1": Case(
        "train", ("--output_dir", "OUT", *TINY_TRAINING, "--learn_sigma", "--loss", "hybrid", "--vlb_weight", "-1"),
        "--vlb_weight must not be negative"),
    "train --ema_power 0": Case("train", ("--output_dir", "OUT", "--ema_power", "0"), "--ema_power must be positive"),
    "train --ema_inv_gamma 0": Case(
        "train", ("--output_dir", "OUT", "--ema_inv_gamma", "0"), "--ema_inv_gamma must be positive"),
    "train --max_grad_norm nan": Case(
        "train", ("--output_dir", "OUT", "--max_grad_norm", "nan"), "--max_grad_norm must be a finite number, got nan"),
    "bpd --atol inf": Case(
        "ddpm-plus", ("bpd", "--model", "MODEL", "--method", "ode", "--atol", "inf"), "--atol must be a finite number"),
    "train --adam_beta2 1": Case("train", ("--output_dir", "OUT", "--adam_beta2", "1"), "must lie in [0, 1)"),
    "train --image_column with the digits": Case(
        "train", ("--output_dir", "OUT", "--image_column", "img"),
        "--image_column has no effect here: it applies to 🤗 datasets (--dataset_name), not to the embedded digits"),
    "train --cache_dir with an image folder": Case(
        "train", ("--output_dir", "OUT", "--train_data_dir", "OUT", "--cache_dir", "OUT/cache"),
        "--cache_dir has no effect here"),
    "train --beta_end with the cosine schedule": Case(
        "train", ("--output_dir", "OUT", "--beta_schedule", "squaredcos_cap_v2", "--beta_end", "0.03"),
        "--beta_end has no effect here: --beta_schedule squaredcos_cap_v2 does not use it"),
    "train --vlb_weight with --loss simple": Case(
        "train", ("--output_dir", "OUT", "--vlb_weight", "0.01"), "it weights the VLB term of --loss hybrid"),
    "train --ema_power with --no-use_ema": Case(
        "train", ("--output_dir", "OUT", "--no-use_ema", "--ema_power", "0.5"), "--no-use_ema keeps no EMA"),
    "train --fid_num_samples without --eval_fid_every": Case(
        "train", ("--output_dir", "OUT", "--fid_num_samples", "500"), "it applies with --eval_fid_every N only"),
    "train --lr_warmup_steps with a constant rate": Case(
        "train", ("--output_dir", "OUT", "--lr_scheduler", "constant", "--lr_warmup_steps", "10"),
        "--lr_scheduler constant has no warm-up"),
}  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_fault_is_refused_in_one_line_before_work(name, model, earlier, tmp_path):
    case = CASES[name]
    arguments = [argument.replace("MODEL", str(model)).replace("OUT", str(earlier)) for argument in case.arguments]
    before = tree_hashes(earlier)
    run = run_ddpm_plus if case.kind == "ddpm-plus" else run_train
    result = run(*arguments, cwd=tmp_path)
    assert_refused_without_change(result, case.message.replace("OUT", str(earlier)), before, earlier)


def test_a_saved_scheduler_with_a_zero_clip_range_is_refused_in_one_line(model, earlier, tmp_path):
    """A pipeline whose scheduler would collapse every prediction to 0 (diffusers loads it silently)."""
    broken = tmp_path / "broken"
    pipeline = DDPMPlusPipeline.from_pretrained(model)
    pipeline.save_pretrained(broken)
    config_path = broken / "scheduler" / "scheduler_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "clip_sample_range": 0.0}))
    before = tree_hashes(earlier)
    result = run_ddpm_plus("sample", "--model", str(broken), "--out", str(earlier / "grid.png"), cwd=tmp_path)
    assert_refused_without_change(result, "clip_sample_range must be positive, got 0.0", before, earlier)


def test_an_odd_but_valid_plot_name_is_drawn(model, earlier, tmp_path):
    """A `$` (mathtext), quotes and a non-ASCII letter in a figure's name: the figure is written, as named."""
    plot = earlier / "bound $x^$ 'q' ü.png"
    before = tree_hashes(earlier)
    result = run_ddpm_plus(
        "bpd", "--model", str(model), "--max-images", "2", "--device", "cpu", "--plot", str(plot), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert plot.stat().st_size > 0
    assert {path: digest for path, digest in tree_hashes(earlier).items() if path != str(plot)} == before


def test_fid_features_that_cannot_fit_in_memory_are_refused_before_any_is_computed(tmp_path):
    """An archive whose header promises 10^12 images: their features alone could not fit (the count is read from the
    header; no image is loaded)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (10**12, 8, 8, 3)})
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as archive:
        archive.writestr("arr_0.npy", header.getvalue())
    np.savez(tmp_path / "two.npz", arr_0=np.zeros((2, 8, 8, 3), dtype=np.uint8))
    huge, two = ArchiveImages(tmp_path / "huge.npz"), ArchiveImages(tmp_path / "two.npz")
    assert huge.count == 10**12
    with pytest.raises(ValueError, match=r"the features of 1000000000002 images needs at least [\d.]+ PB of memory"):
        check_request(huge, two, (8, 8, 3), "inception")
    check_request(two, two, (8, 8, 3), "inception")  # a small request passes
