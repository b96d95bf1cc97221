"""Pipeline directories saved by ddpm_plus 0.1.0, before the shipped code was split (tests/fixtures/saved_v0/), still
load, with ddpm_plus and with plain diffusers (`trust_remote_code=True`, ddpm_plus not importable), and sample and
compute bits/dim as they did when they were saved. `expected.json` holds what the code of that time computed.

The directories and `expected.json` were written with the code of commit cfa5fb9 (torch 2.13.0 CPU, diffusers
0.42.1) by this script, run as `python make_saved_v0.py tests/fixtures/saved_v0`:

    import json
    import sys
    from pathlib import Path

    import numpy as np
    import torch
    from diffusers import UNet2DModel

    from ddpm_plus import DDPMPlusPipeline, DDPMPlusPosteriorPipeline, DDPMPlusScheduler

    torch.set_num_threads(1)
    root = Path(sys.argv[1])


    def tiny_unet(out_channels: int) -> UNet2DModel:
        torch.manual_seed(0)
        return UNet2DModel(
            sample_size=8, in_channels=3, out_channels=out_channels, block_out_channels=(4, 8), layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=4,
        ).eval()


    chain = {"num_train_timesteps": 20, "beta_start": 0.01, "beta_end": 0.25}
    pipelines = {
        "ddpm_plus": DDPMPlusPipeline(
            unet=tiny_unet(6),
            scheduler=DDPMPlusScheduler(**chain, variance_type="learned_range", prediction_type="v_prediction"),
        ),
        "ddpm_plus_posterior": DDPMPlusPosteriorPipeline(unet=tiny_unet(3), scheduler=DDPMPlusScheduler(**chain)),
    }
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 8, 8, 3)).astype(np.uint8)
    measurement = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(3)) * 2 - 1
    expected = {"pixels": pixels.tolist(), "measurement": measurement.tolist(), "steps": 5, "seeds": [1, 2]}
    for name, pipe in pipelines.items():
        pipe.set_progress_bar_config(disable=True)
        pipe.save_pretrained(root / name)
        generators = [torch.Generator().manual_seed(seed) for seed in expected["seeds"]]
        if name == "ddpm_plus":
            images = pipe(batch_size=2, generator=generators, num_inference_steps=5, output_type="np").images
        else:
            images = pipe(measurement, "super_resolution", factor=2, num_inference_steps=5, generator=generators,
                          output_type="np").images
        bound = pipe.log_likelihood(pixels, generator=torch.Generator().manual_seed(0))
        expected[name] = {"images": images.tolist(), "bits_per_dim": bound.bits_per_dim.tolist()}
    (root / "expected.json").write_text(json.dumps(expected) + "\\n")
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fresh_process import BLOCK_DDPM_PLUS, fresh_process

from ddpm_plus import DDPMPlusPipeline, DDPMPlusPosteriorPipeline, DDPMPlusScheduler

SAVED = Path(__file__).resolve().parent / "fixtures" / "saved_v0"
EXPECTED = json.loads((SAVED / "expected.json").read_text(encoding="utf-8"))
PIPELINE_CLASSES = {"ddpm_plus": DDPMPlusPipeline, "ddpm_plus_posterior": DDPMPlusPosteriorPipeline}
# The recorded numbers are matched exactly on the machine that wrote them; other torch builds may round the UNet's
# float32 convolutions (and, for posterior sampling, their gradients) differently, hence these tolerances: torch 2.6
# on Python 3.10 differs by up to 7.4e-6 in the posterior samples, far below one 8-bit level (1/255 ≈ 3.9e-3). Old
# and new code in one environment must agree bitwise.
IMAGE_TOLERANCE = 1e-4
BITS_PER_DIM_RTOL = 1e-6


def run(pipe, name: str) -> dict[str, np.ndarray]:
    """Samples and bits/dim as `expected.json` records them, with the call the script made."""
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(seed) for seed in EXPECTED["seeds"]]
    if name == "ddpm_plus":
        call = {"batch_size": len(generators)}
    else:
        measurement = torch.tensor(EXPECTED["measurement"], dtype=torch.float32)
        call = {"measurement": measurement, "operator": "super_resolution", "factor": 2}
    images = pipe(**call, generator=generators, num_inference_steps=EXPECTED["steps"], output_type="np").images
    pixels = np.array(EXPECTED["pixels"], dtype=np.uint8)
    bound = pipe.log_likelihood(pixels, generator=torch.Generator().manual_seed(0))
    return {"images": images, "bits_per_dim": bound.bits_per_dim.numpy()}


def assert_as_recorded(results: dict[str, np.ndarray], name: str) -> None:
    expected = EXPECTED[name]
    np.testing.assert_allclose(results["images"], np.array(expected["images"]), rtol=0, atol=IMAGE_TOLERANCE)
    np.testing.assert_allclose(results["bits_per_dim"], expected["bits_per_dim"], rtol=BITS_PER_DIM_RTOL, atol=0)


@pytest.fixture(scope="module")
def with_ddpm_plus() -> dict[str, dict[str, np.ndarray]]:
    """Each directory loaded with the package's class (none of the directory's code runs), run as recorded."""
    results = {}
    for name, pipeline_class in PIPELINE_CLASSES.items():
        pipe = pipeline_class.from_pretrained(SAVED / name)
        assert type(pipe) is pipeline_class and type(pipe.scheduler) is DDPMPlusScheduler
        results[name] = run(pipe, name)
    return results


@pytest.mark.parametrize("name", list(PIPELINE_CLASSES))
def test_saved_v0_directory_loads_with_ddpm_plus_and_computes_as_recorded(with_ddpm_plus, name):
    assert_as_recorded(with_ddpm_plus[name], name)


_PLAIN_DIFFUSERS_SCRIPT = """
import json
import os
import sys

assert hidden
import numpy as np
import torch
from diffusers import DiffusionPipeline

torch.set_num_threads(1)
saved, out = sys.argv[1:3]
expected = json.loads(open(os.path.join(saved, "expected.json")).read())
for name in ("ddpm_plus", "ddpm_plus_posterior"):
    pipe = DiffusionPipeline.from_pretrained(os.path.join(saved, name), trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    print(type(pipe).__module__ + "." + type(pipe).__name__)
    generators = [torch.Generator().manual_seed(seed) for seed in expected["seeds"]]
    if name == "ddpm_plus":
        call = {{"batch_size": len(generators)}}
    else:
        measurement = torch.tensor(expected["measurement"], dtype=torch.float32)
        call = {{"measurement": measurement, "operator": "super_resolution", "factor": 2}}
    images = pipe(**call, generator=generators, num_inference_steps=expected["steps"], output_type="np").images
    pixels = np.array(expected["pixels"], dtype=np.uint8)
    bound = pipe.log_likelihood(pixels, generator=torch.Generator().manual_seed(0)).bits_per_dim.numpy()
    np.savez(os.path.join(out, name + ".npz"), images=images, bits_per_dim=bound)
"""


def test_saved_v0_directories_load_with_plain_diffusers_and_compute_as_recorded(with_ddpm_plus, tmp_path):
    """The code saved in the directories runs without ddpm_plus, as recorded, and bitwise as today's package code."""
    script = BLOCK_DDPM_PLUS + _PLAIN_DIFFUSERS_SCRIPT.format()
    result = fresh_process(script, str(SAVED), str(tmp_path), cwd=tmp_path)
    assert result.stdout.split() == [
        "diffusers_modules.local.pipeline_ddpm_plus.DDPMPlusPipeline",
        "diffusers_modules.local.pipeline_ddpm_plus_posterior.DDPMPlusPosteriorPipeline",
    ]
    for name in PIPELINE_CLASSES:
        with np.load(tmp_path / f"{name}.npz") as saved_code:
            results = {key: saved_code[key] for key in ("images", "bits_per_dim")}
        assert_as_recorded(results, name)
        for key, value in results.items():
            assert np.array_equal(value, with_ddpm_plus[name][key]), (name, key)
