"""DDPMPlusScheduler swapped into diffusers' own pipelines, proven offline with tiny random-weight models.

Every comparison runs diffusers' classes side by side with ours and asserts bitwise equality of the outputs.
"""

import inspect
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)
from diffusers.utils import logging as diffusers_logging
from sd_fixtures import (
    OUTDATED_SD_SCHEDULER_CONFIG,
    SD2_SCHEDULER_CONFIG,
    SD_SCHEDULER_CONFIG,
    tiny_ddpm_unet,
    tiny_sd_components,
    tiny_sd_pipeline,
)

from ddpm_plus.pipeline_ddpm_plus import DDPMPlusPipeline
from ddpm_plus.scheduling_ddpm_plus import DDPMPlusScheduler

PROMPT = "a photo of a cat in the snow"
GUIDANCE_SCALE = 7.5
SNIPPET = Path(__file__).parent / "snippets" / "swap_scheduler.py"


# ------------------------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------------------------


def make_generator(seeds: int | list[int]) -> torch.Generator | list[torch.Generator]:
    """One seeded CPU generator, or a list of them (one per image)."""
    if isinstance(seeds, list):
        return [torch.Generator().manual_seed(seed) for seed in seeds]
    return torch.Generator().manual_seed(seeds)


def images_with_both_schedulers(pipe: DiffusionPipeline, scheduler_config: dict, **call_kwargs) -> tuple:
    """Run `pipe` with diffusers' DDPMScheduler, swap in DDPMPlusScheduler the documented way, run again."""
    seeds = call_kwargs.pop("seeds")
    pipe.scheduler = DDPMScheduler.from_config(scheduler_config)
    assert_configured(pipe.scheduler, scheduler_config)
    reference = pipe(**call_kwargs, generator=make_generator(seeds)).images
    pipe.scheduler = DDPMPlusScheduler.from_config(pipe.scheduler.config)
    assert type(pipe.scheduler) is DDPMPlusScheduler
    assert_configured(pipe.scheduler, scheduler_config)
    swapped = pipe(**call_kwargs, generator=make_generator(seeds)).images
    return reference, swapped


def init_keys(scheduler_class: type) -> set[str]:
    """The config keys of a scheduler class (its constructor arguments)."""
    return set(scheduler_class._get_init_keys(scheduler_class)) - {"self"}


def assert_configured(scheduler: DDPMScheduler, scheduler_config: dict) -> None:
    """Every DDPM key given in `scheduler_config` reached the scheduler's config."""
    for key in init_keys(DDPMScheduler) & set(scheduler_config):
        assert scheduler.config[key] == scheduler_config[key], key


def assert_bitwise_equal_and_informative(reference: np.ndarray, swapped: np.ndarray) -> None:
    """Bitwise equality of two image batches that are finite and not saturated (so equality means something)."""
    assert np.isfinite(reference).all()
    assert ((reference > 0) & (reference < 1)).mean() > 0.5, "images are saturated; the comparison would be weak"
    assert reference.dtype == swapped.dtype and reference.shape == swapped.shape
    assert np.array_equal(reference, swapped)


@contextmanager
def captured_diffusers_warnings() -> Iterator[list[str]]:
    """Collect the messages diffusers logs at WARNING level or above.

    diffusers' root logger does not propagate to Python's root logger (so pytest's `caplog` misses it); a handler
    is attached to it directly.
    """
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.WARNING)
    logger = diffusers_logging.get_logger("diffusers")
    logger.addHandler(handler)
    messages: list[str] = []
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        messages.extend(line for line in stream.getvalue().splitlines() if line)


def unexpected_key_warnings(messages: list[str], class_name: str) -> list[str]:
    """The 'not expected and will be ignored' warnings, with the receiving class name made generic."""
    return [m.replace(class_name, "<scheduler>") for m in messages if "are not expected and will be ignored" in m]


def seeded_pil_image(size: int = 16, seed: int = 0) -> PIL.Image.Image:
    """A reproducible smooth RGB test image."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return PIL.Image.fromarray(coarse).resize((size, size), PIL.Image.BILINEAR)


@pytest.fixture(scope="module")
def sd_pipe(tmp_path_factory) -> StableDiffusionPipeline:
    return tiny_sd_pipeline(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def img2img_pipe(sd_pipe) -> StableDiffusionImg2ImgPipeline:
    pipe = StableDiffusionImg2ImgPipeline(**sd_pipe.components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------------------------------------------------------
# DDPMPipeline
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config_overrides", "num_inference_steps", "seeds"),
    [
        ({}, 1, 0),
        ({}, 7, [3, 4]),
        ({}, 40, 1),
        ({"variance_type": "fixed_large", "timestep_spacing": "trailing"}, 9, [5, 6]),
        ({"prediction_type": "v_prediction", "beta_schedule": "squaredcos_cap_v2"}, 6, 2),
        ({"prediction_type": "sample", "thresholding": True, "timestep_spacing": "linspace"}, 5, 7),
    ],
)
def test_ddpm_pipeline_swap_is_bitwise_identical(config_overrides, num_inference_steps, seeds):
    pipe = DDPMPipeline(unet=tiny_ddpm_unet(), scheduler=DDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    batch_size = len(seeds) if isinstance(seeds, list) else 2
    config = dict(DDPMScheduler(**config_overrides).config)
    reference, swapped = images_with_both_schedulers(
        pipe, config, seeds=seeds, batch_size=batch_size, num_inference_steps=num_inference_steps, output_type="np"
    )
    assert_bitwise_equal_and_informative(reference, swapped)


def test_ddpm_pipeline_comparison_is_sensitive_to_the_generator():
    pipe = DDPMPipeline(unet=tiny_ddpm_unet(), scheduler=DDPMPlusScheduler())
    pipe.set_progress_bar_config(disable=True)
    first = pipe(batch_size=1, generator=make_generator(0), num_inference_steps=5, output_type="np").images
    second = pipe(batch_size=1, generator=make_generator(1), num_inference_steps=5, output_type="np").images
    assert not np.array_equal(first, second)


# ------------------------------------------------------------------------------------------------------------------
# Stable Diffusion text-to-image and image-to-image (classifier-free guidance)
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheduler_config", "steps", "seeds"),
    [
        (SD_SCHEDULER_CONFIG, {"num_inference_steps": 2}, 0),
        (SD_SCHEDULER_CONFIG, {"num_inference_steps": 5}, [1, 2]),
        (SD_SCHEDULER_CONFIG, {"timesteps": [999, 742, 301, 87, 0]}, [3, 4]),
        (SD2_SCHEDULER_CONFIG, {"num_inference_steps": 3}, 5),
    ],
    ids=["sd1-2steps", "sd1-5steps-generator-list", "sd1-custom-timesteps", "sd2-vpred-3steps"],
)
def test_stable_diffusion_txt2img_swap_is_bitwise_identical(sd_pipe, scheduler_config, steps, seeds):
    num_images = len(seeds) if isinstance(seeds, list) else 1
    reference, swapped = images_with_both_schedulers(
        sd_pipe,
        scheduler_config,
        seeds=seeds,
        prompt=PROMPT,
        negative_prompt="blurry",
        guidance_scale=GUIDANCE_SCALE,
        num_images_per_prompt=num_images,
        output_type="np",
        **steps,
    )
    assert reference.shape == (num_images, 16, 16, 3)
    assert_bitwise_equal_and_informative(reference, swapped)


@pytest.mark.parametrize(
    ("steps", "strength", "seeds"),
    [
        ({"num_inference_steps": 4}, 0.75, 0),
        ({"num_inference_steps": 6}, 0.5, [1, 2]),
        ({"timesteps": [900, 650, 333, 120, 10]}, 0.8, [3, 4]),
    ],
    ids=["4steps", "6steps-generator-list", "custom-timesteps"],
)
def test_stable_diffusion_img2img_swap_is_bitwise_identical(img2img_pipe, steps, strength, seeds):
    num_images = len(seeds) if isinstance(seeds, list) else 1
    reference, swapped = images_with_both_schedulers(
        img2img_pipe,
        SD_SCHEDULER_CONFIG,
        seeds=seeds,
        prompt=PROMPT,
        image=seeded_pil_image(),
        strength=strength,
        guidance_scale=GUIDANCE_SCALE,
        num_images_per_prompt=num_images,
        output_type="np",
        **steps,
    )
    assert_bitwise_equal_and_informative(reference, swapped)


def test_stable_diffusion_latents_are_bitwise_identical(sd_pipe):
    reference, swapped = images_with_both_schedulers(
        sd_pipe,
        SD_SCHEDULER_CONFIG,
        seeds=[7, 8],
        prompt=PROMPT,
        guidance_scale=GUIDANCE_SCALE,
        num_images_per_prompt=2,
        num_inference_steps=4,
        output_type="latent",
    )
    assert torch.isfinite(reference).all()
    assert torch.equal(reference, swapped)


def test_pipelines_pass_the_same_step_and_set_timesteps_arguments(sd_pipe):
    """SD pipelines inspect `step` (eta, generator) and `set_timesteps` (timesteps, sigmas) signatures."""
    for method in ("step", "set_timesteps"):
        ours = list(inspect.signature(getattr(DDPMPlusScheduler, method)).parameters)
        theirs = list(inspect.signature(getattr(DDPMScheduler, method)).parameters)
        assert ours[: len(theirs)] == theirs, method  # extra DDPM+ options may only follow diffusers' arguments
        for inspected in ("eta", "generator", "timesteps", "sigmas"):
            assert (inspected in ours) == (inspected in theirs), (method, inspected)
    extra_kwargs = {}
    for scheduler_class in (DDPMScheduler, DDPMPlusScheduler):
        sd_pipe.scheduler = scheduler_class.from_config(SD_SCHEDULER_CONFIG)
        extra_kwargs[scheduler_class] = sd_pipe.prepare_extra_step_kwargs(make_generator(0), eta=0.3)
    assert set(extra_kwargs[DDPMPlusScheduler]) == set(extra_kwargs[DDPMScheduler]) == {"generator"}


def test_outdated_sd_config_is_rewritten_for_both_schedulers(tmp_path):
    """The SD constructor warns and rewrites steps_offset=0 / clip_sample=True; our scheduler honours the rewrite."""
    components = tiny_sd_components(tmp_path / "tokenizer")
    outputs = {}
    for scheduler_class in (DDPMScheduler, DDPMPlusScheduler):
        scheduler = scheduler_class.from_config(OUTDATED_SD_SCHEDULER_CONFIG)
        with pytest.warns(FutureWarning) as record:
            pipe = StableDiffusionPipeline(**components, scheduler=scheduler)
        messages = " ".join(str(warning.message) for warning in record)
        assert "`steps_offset` should be set to 1 instead of 0" in messages
        assert "`clip_sample` should be set to False" in messages
        assert pipe.scheduler is scheduler
        assert scheduler.config.steps_offset == 1 and scheduler.config.clip_sample is False
        pipe.set_progress_bar_config(disable=True)
        call = {"prompt": PROMPT, "guidance_scale": GUIDANCE_SCALE, "num_inference_steps": 3, "output_type": "np"}
        outputs[scheduler_class] = pipe(**call, generator=make_generator(0)).images
        # The rewrite is what the pipeline ran with: the same images as a scheduler built from the current config.
        pipe.scheduler = scheduler_class.from_config(SD_SCHEDULER_CONFIG)
        assert np.array_equal(pipe(**call, generator=make_generator(0)).images, outputs[scheduler_class])
        # ... and it matters: the outdated config (assigned without the rewrite) gives other images.
        pipe.scheduler = scheduler_class.from_config(OUTDATED_SD_SCHEDULER_CONFIG)
        assert not np.array_equal(pipe(**call, generator=make_generator(0)).images, outputs[scheduler_class])
    assert_bitwise_equal_and_informative(outputs[DDPMScheduler], outputs[DDPMPlusScheduler])


# ------------------------------------------------------------------------------------------------------------------
# Config round trips and unexpected-key warnings
# ------------------------------------------------------------------------------------------------------------------

OTHER_SCHEDULERS = [
    DDIMScheduler,
    EulerDiscreteScheduler,
    DPMSolverMultistepScheduler,
    PNDMScheduler,
    LCMScheduler,
]
# Non-default values for keys shared with other schedulers, so that "preserved" cannot pass by defaults alone.
ROUND_TRIP_CONFIG = {
    "num_train_timesteps": 500,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "clip_sample": False,
    "prediction_type": "v_prediction",
    "timestep_spacing": "trailing",
    "rescale_betas_zero_snr": True,
}


def test_warning_capture_sees_unexpected_keys():
    with captured_diffusers_warnings() as messages:
        DDPMPlusScheduler.from_config({**DDPMScheduler().config, "not_a_scheduler_key": 3})
    assert any("not_a_scheduler_key" in m for m in unexpected_key_warnings(messages, "DDPMPlusScheduler"))


@pytest.mark.parametrize("other_class", OTHER_SCHEDULERS, ids=lambda c: c.__name__)
def test_config_round_trip_without_warnings(other_class):
    ours = DDPMPlusScheduler.from_config(ROUND_TRIP_CONFIG)
    with captured_diffusers_warnings() as messages:
        other = other_class.from_config(ours.config)
        back = DDPMPlusScheduler.from_config(other.config)
    assert unexpected_key_warnings(messages, other_class.__name__) == []
    explicit_shared_keys = init_keys(DDPMPlusScheduler) & init_keys(other_class) & set(ROUND_TRIP_CONFIG)
    assert {"num_train_timesteps", "beta_schedule", "prediction_type", "timestep_spacing"} <= explicit_shared_keys
    for key in explicit_shared_keys:
        assert other.config[key] == ours.config[key], key
    for key in init_keys(DDPMPlusScheduler):
        assert back.config[key] == ours.config[key], key
    # The other scheduler is configured exactly as when it is built from diffusers' DDPMScheduler.
    from_diffusers = other_class.from_config(DDPMScheduler.from_config(ROUND_TRIP_CONFIG).config)
    for key in init_keys(other_class):
        assert other.config[key] == from_diffusers.config[key], key


@pytest.mark.parametrize("other_class", OTHER_SCHEDULERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    "source_config",
    [
        {**ROUND_TRIP_CONFIG, "variance_type": "fixed_large", "thresholding": False, "clip_sample_range": 2.0},
        SD_SCHEDULER_CONFIG,
    ],
    ids=["all-keys-explicit", "from-sd1-pndm-config"],
)
def test_config_round_trip_warnings_match_diffusers_ddpm(other_class, source_config):
    """Both DDPM classes move to and from `other_class` with the same warnings, also for keys only LCM rejects."""
    warnings_by_class = {}
    for ddpm_class in (DDPMScheduler, DDPMPlusScheduler):
        source = ddpm_class.from_config(source_config)
        with captured_diffusers_warnings() as messages:
            back = ddpm_class.from_config(other_class.from_config(source.config).config)
        for key in init_keys(ddpm_class):
            assert back.config[key] == source.config[key], key
        warnings_by_class[ddpm_class] = unexpected_key_warnings(
            unexpected_key_warnings(messages, other_class.__name__), ddpm_class.__name__
        )
    assert warnings_by_class[DDPMPlusScheduler] == warnings_by_class[DDPMScheduler]
    # LCMScheduler accepts no DDPM-only key, so there the compared warnings are not empty.
    assert bool(warnings_by_class[DDPMScheduler]) == (other_class is LCMScheduler)


@pytest.mark.parametrize(
    "config",
    [
        SD_SCHEDULER_CONFIG,
        SD2_SCHEDULER_CONFIG,
        OUTDATED_SD_SCHEDULER_CONFIG,
        {**SD_SCHEDULER_CONFIG, "original_inference_steps": 50, "timestep_scaling": 10.0},
    ],
    ids=["sd1-pndm", "sd2-ddim", "sd1-outdated", "with-lcm-only-keys"],
)
def test_real_sd_config_warns_exactly_like_diffusers_ddpm(config):
    warnings_by_class = {}
    for ddpm_class in (DDPMScheduler, DDPMPlusScheduler):
        with captured_diffusers_warnings() as messages:
            scheduler = ddpm_class.from_config(config)
        warnings_by_class[ddpm_class] = unexpected_key_warnings(messages, ddpm_class.__name__)
        assert scheduler.config.beta_schedule == config["beta_schedule"]
        assert scheduler.config.steps_offset == config["steps_offset"]
    assert warnings_by_class[DDPMPlusScheduler] == warnings_by_class[DDPMScheduler]
    if "original_inference_steps" in config:  # keys no DDPM-compatible scheduler knows: warned about by both
        assert (
            warnings_by_class[DDPMPlusScheduler] and "original_inference_steps" in warnings_by_class[DDPMScheduler][0]
        )
    else:
        assert warnings_by_class[DDPMPlusScheduler] == []


# ------------------------------------------------------------------------------------------------------------------
# save_pretrained / from_pretrained
# ------------------------------------------------------------------------------------------------------------------


def _sd_call() -> dict:
    return {
        "prompt": PROMPT,
        "guidance_scale": GUIDANCE_SCALE,
        "num_inference_steps": 4,
        "num_images_per_prompt": 2,
        "output_type": "np",
    }


@pytest.fixture(scope="module")
def saved_sd_pipeline(sd_pipe, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """An SD pipeline with our scheduler saved to disk, and the images it makes before saving."""
    sd_pipe.scheduler = DDPMPlusScheduler.from_config(SD_SCHEDULER_CONFIG)
    images = sd_pipe(**_sd_call(), generator=make_generator([11, 12])).images
    directory = tmp_path_factory.mktemp("saved") / "pipeline"
    sd_pipe.save_pretrained(directory)
    return directory, images


def test_saved_pipeline_records_our_scheduler_in_safetensors_only_repo(saved_sd_pipeline):
    directory, _ = saved_sd_pipeline
    model_index = json.loads((directory / "model_index.json").read_text())
    assert model_index["scheduler"] == ["ddpm_plus.scheduling_ddpm_plus", "DDPMPlusScheduler"]
    scheduler_config = json.loads((directory / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler_config["_class_name"] == "DDPMPlusScheduler"
    weight_files = [p for p in directory.rglob("*") if p.suffix in {".safetensors", ".bin", ".pt", ".pth", ".ckpt"}]
    assert len(weight_files) == 3 and all(p.suffix == ".safetensors" for p in weight_files)


@pytest.mark.parametrize("loader", [StableDiffusionPipeline, DiffusionPipeline], ids=lambda c: c.__name__)
def test_saved_pipeline_reloads_with_identical_outputs(saved_sd_pipeline, loader):
    directory, images = saved_sd_pipeline
    reloaded = loader.from_pretrained(directory)
    reloaded.set_progress_bar_config(disable=True)
    assert isinstance(reloaded, StableDiffusionPipeline)
    assert type(reloaded.scheduler) is DDPMPlusScheduler
    expected_config = DDPMPlusScheduler.from_config(SD_SCHEDULER_CONFIG).config
    for key in init_keys(DDPMPlusScheduler):
        assert reloaded.scheduler.config[key] == expected_config[key], key
    reloaded_images = reloaded(**_sd_call(), generator=make_generator([11, 12])).images
    assert_bitwise_equal_and_informative(images, reloaded_images)


_FRESH_PROCESS_SCRIPT = """
import sys

import numpy as np
import torch
from diffusers import DiffusionPipeline

import ddpm_plus  # noqa: F401  (the one line needed to load a pipeline saved with DDPMPlusScheduler)

directory, output_file, num_threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(num_threads)
pipe = DiffusionPipeline.from_pretrained(directory)
pipe.set_progress_bar_config(disable=True)
generator = [torch.Generator().manual_seed(seed) for seed in (11, 12)]
images = pipe(generator=generator, **{call}).images
np.save(output_file, images)
print(type(pipe.scheduler).__module__, type(pipe.scheduler).__name__)
"""


def _offline_environment() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_saved_pipeline_reloads_in_a_fresh_process(saved_sd_pipeline, tmp_path):
    directory, images = saved_sd_pipeline
    output_file = tmp_path / "images.npy"
    script = _FRESH_PROCESS_SCRIPT.format(call=repr(_sd_call()))
    result = subprocess.run(
        [sys.executable, "-c", script, str(directory), str(output_file), str(torch.get_num_threads())],
        capture_output=True,
        text=True,
        env=_offline_environment(),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["ddpm_plus.scheduling_ddpm_plus", "DDPMPlusScheduler"]
    assert_bitwise_equal_and_informative(images, np.load(output_file))


def test_swap_scheduler_snippet_runs_as_a_script():
    result = subprocess.run(
        [sys.executable, str(SNIPPET)], capture_output=True, text=True, env=_offline_environment(), timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]


# ------------------------------------------------------------------------------------------------------------------
# Learned variances in diffusers' DDPMPipeline
# ------------------------------------------------------------------------------------------------------------------


def _ddpm_call(seeds: list[int], num_inference_steps: int = 8) -> dict:
    return {
        "batch_size": len(seeds),
        "seeds": seeds,
        "num_inference_steps": num_inference_steps,
        "output_type": "np",
    }


def test_learned_range_swap_in_ddpm_pipeline_is_bitwise_identical():
    pipe = DDPMPipeline(unet=tiny_ddpm_unet(learn_sigma=True), scheduler=DDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.out_channels == 2 * pipe.unet.config.in_channels
    config = dict(DDPMScheduler(variance_type="learned_range").config)
    reference, swapped = images_with_both_schedulers(pipe, config, **_ddpm_call([0, 1]))
    assert_bitwise_equal_and_informative(reference, swapped)


def test_learned_range_in_ddpm_pipeline_matches_ddpm_plus_pipeline():
    unet = tiny_ddpm_unet(learn_sigma=True)
    scheduler = DDPMPlusScheduler(variance_type="learned_range")
    diffusers_pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    ours_pipe = DDPMPlusPipeline(unet=unet, scheduler=scheduler)
    for pipe in (diffusers_pipe, ours_pipe):
        pipe.set_progress_bar_config(disable=True)
    call = {"batch_size": 2, "num_inference_steps": 8, "output_type": "np"}
    reference = diffusers_pipe(**call, generator=make_generator([2, 3])).images
    ours = ours_pipe(**call, generator=make_generator([2, 3])).images
    assert_bitwise_equal_and_informative(reference, ours)


def test_learned_variance_is_nan_in_diffusers_and_finite_with_ours():
    """Documented deviation: diffusers takes √ of the raw variance channels (NaN where they are negative)."""
    pipe = DDPMPipeline(unet=tiny_ddpm_unet(learn_sigma=True), scheduler=DDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        variance_channels = pipe.unet(torch.randn(2, 3, 8, 8, generator=make_generator(0)), 500).sample[:, 3:]
    assert (variance_channels < 0).any(), "the test needs negative variance outputs to show the NaN"
    config = dict(DDPMScheduler(variance_type="learned").config)
    diffusers_images, ours = images_with_both_schedulers(pipe, config, **_ddpm_call([4, 5], num_inference_steps=4))
    assert np.isnan(diffusers_images).any()
    assert np.isfinite(ours).all()
    assert ((ours > 0) & (ours < 1)).mean() > 0.5
