"""DDPMPlusPipeline: sampling (bitwise parity with diffusers' DDPMPipeline), the exact bound, bad input, the CLI."""

import json
import math
import shutil

import numpy as np
import PIL.Image
import pytest
import safetensors.torch
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler
from keyed_noise import documented_noise, noise_keys
from pipeline_fixtures import (
    CHANNELS,
    NUM_TRAIN_TIMESTEPS,
    SAMPLE_SIZE,
    SCHEDULER_CONFIG,
    generators,
    random_uint8_images,
    tiny_unet,
)

from ddpm_plus.cli import main as cli_main
from ddpm_plus.pipeline_ddpm_plus import DDPMPlusPipeline, LikelihoodOutput, PipelineLoadError, image_size
from ddpm_plus.scheduling_ddpm_plus import PREDICTION_TYPES, DDPMPlusScheduler


def make_pipeline(
    learn_sigma: bool = False, dtype: torch.dtype = torch.float32, **scheduler_kwargs
) -> DDPMPlusPipeline:
    pipe = DDPMPlusPipeline(
        unet=tiny_unet(learn_sigma=learn_sigma, dtype=dtype),
        scheduler=DDPMPlusScheduler(**{**SCHEDULER_CONFIG, **scheduler_kwargs}),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------------------------


def test_bfloat16_samples_convert_to_float32_arrays_and_pil():
    """numpy has no bfloat16 (diffusers' DDPMPipeline raises there): the samples are upcast, exactly."""
    pipe = make_pipeline(dtype=torch.bfloat16)
    call = {"batch_size": 2, "num_inference_steps": 3}
    tensor = pipe(**call, generator=torch.Generator().manual_seed(0), output_type="pt").images
    array = pipe(**call, generator=torch.Generator().manual_seed(0), output_type="np").images
    pil = pipe(**call, generator=torch.Generator().manual_seed(0)).images
    assert tensor.dtype == torch.bfloat16 and array.dtype == np.float32 and np.isfinite(array).all()
    assert np.array_equal(tensor.float().permute(0, 2, 3, 1).numpy(), array)
    assert np.array_equal(np.stack([np.asarray(image) for image in pil]), (array * 255).round().astype(np.uint8))


def test_output_types_shapes_dtypes_and_determinism():
    pipe = make_pipeline()
    call = {"batch_size": 2, "num_inference_steps": 5}
    pil = pipe(**call, generator=torch.Generator().manual_seed(0)).images
    array = pipe(**call, generator=torch.Generator().manual_seed(0), output_type="np").images
    tensor = pipe(**call, generator=torch.Generator().manual_seed(0), output_type="pt").images
    (tuple_images,) = pipe(**call, generator=torch.Generator().manual_seed(0), output_type="pt", return_dict=False)

    assert len(pil) == 2 and all(isinstance(image, PIL.Image.Image) for image in pil)
    assert pil[0].size == (SAMPLE_SIZE, SAMPLE_SIZE) and pil[0].mode == "RGB"
    assert isinstance(array, np.ndarray) and array.dtype == np.float32
    assert array.shape == (2, SAMPLE_SIZE, SAMPLE_SIZE, CHANNELS) and 0 <= array.min() and array.max() <= 1
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32
    assert tensor.shape == (2, CHANNELS, SAMPLE_SIZE, SAMPLE_SIZE)
    # the same seed gives the same images in every format
    assert torch.equal(tuple_images, tensor)
    assert np.array_equal(tensor.permute(0, 2, 3, 1).numpy(), array)
    assert np.array_equal(np.stack([np.asarray(image) for image in pil]), (array * 255).round().astype(np.uint8))
    other_seed = pipe(**call, generator=torch.Generator().manual_seed(1), output_type="pt").images
    assert not torch.equal(other_seed, tensor)


@pytest.mark.parametrize("num_inference_steps", [NUM_TRAIN_TIMESTEPS, 7, 1])
@pytest.mark.parametrize("generator_kind", ["single", "list"])
@pytest.mark.parametrize("learn_sigma", [False, True], ids=["fixed_small", "learned_range"])
def test_bitwise_identical_to_diffusers_ddpm_pipeline(num_inference_steps, generator_kind, learn_sigma):
    config = {**SCHEDULER_CONFIG, "variance_type": "learned_range" if learn_sigma else "fixed_small"}
    unet = tiny_unet(learn_sigma=learn_sigma)
    ours = DDPMPlusPipeline(unet=unet, scheduler=DDPMPlusScheduler(**config))
    reference = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**config))
    results = []
    for pipe in (ours, reference):
        pipe.set_progress_bar_config(disable=True)
        generator = generators([3, 4, 5]) if generator_kind == "list" else torch.Generator().manual_seed(3)
        results.append(
            pipe(batch_size=3, generator=generator, num_inference_steps=num_inference_steps, output_type="np")
        )
    assert np.array_equal(results[0].images, results[1].images)


def test_generator_list_seeds_each_image():
    pipe = make_pipeline()
    batch = pipe(batch_size=2, generator=generators([7, 8]), num_inference_steps=4, output_type="pt").images
    alone = pipe(batch_size=1, generator=generators([8]), num_inference_steps=4, output_type="pt").images
    torch.testing.assert_close(batch[1:], alone, rtol=0, atol=1e-6)


def test_a_tuple_of_generators_is_one_generator_per_image():
    pipe = make_pipeline()
    as_list = pipe(batch_size=2, generator=generators([7, 8]), num_inference_steps=3, output_type="pt").images
    as_tuple = pipe(batch_size=2, generator=tuple(generators([7, 8])), num_inference_steps=3, output_type="pt").images
    assert torch.equal(as_tuple, as_list)


def test_non_square_images_are_sampled_and_scored():
    """sample_size (height, width) = (8, 16): samples of that shape, and the bound of images of that shape."""
    torch.manual_seed(0)
    unet = tiny_unet()
    wide = type(unet).from_config({**unet.config, "sample_size": (8, 16)}).eval()
    pipe = DDPMPlusPipeline(unet=wide, scheduler=DDPMPlusScheduler(**SCHEDULER_CONFIG))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=1, generator=generators([0]), num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 8, 16, CHANNELS)
    pixels = (images * 255).round().astype(np.uint8)
    assert torch.isfinite(pipe.log_likelihood(pixels, generator=generators([0])).bits_per_dim).all()
    with pytest.raises(ValueError, match=r"takes images of shape \(B, 3, 8, 16\), got \(1, 3, 16, 8\)"):
        pipe.log_likelihood(pixels.transpose(0, 2, 1, 3))


@pytest.mark.parametrize(
    ("sample_size", "expected"), [(8, (8, 8)), ((8, 16), (8, 16)), ([32, 4], (32, 4))], ids=["int", "tuple", "list"]
)
def test_image_size_of_a_sample_size(sample_size, expected):
    assert image_size(sample_size) == expected


@pytest.mark.parametrize("sample_size", [0, -8, (8,), (8, 8, 8), (8, 0), (8.0, 8), "88", True, None])
def test_image_size_refuses_what_is_no_image_size(sample_size):
    with pytest.raises(ValueError, match="sample_size must be a positive integer or a \\(height, width\\) pair"):
        image_size(sample_size)


def test_ddpm_scheduler_is_converted_with_identical_samples():
    unet = tiny_unet()
    pipe = DDPMPlusPipeline(unet=unet, scheduler=DDPMScheduler(**SCHEDULER_CONFIG))
    assert type(pipe.scheduler) is DDPMPlusScheduler
    assert pipe.scheduler.config == DDPMPlusScheduler(**SCHEDULER_CONFIG).config
    assert pipe.config["scheduler"] == ("ddpm_plus.scheduling_ddpm_plus", "DDPMPlusScheduler")
    reference = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**SCHEDULER_CONFIG))
    for p in (pipe, reference):
        p.set_progress_bar_config(disable=True)
    ours = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=6, output_type="pt")
    theirs = reference(
        batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=6, output_type="pt"
    )
    assert torch.equal(ours.images, theirs.images)


def test_other_schedulers_sample_but_have_no_likelihood():
    pipe = DDPMPlusPipeline(unet=tiny_unet(), scheduler=DDIMScheduler(**SCHEDULER_CONFIG))
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler) is DDIMScheduler
    images = pipe(batch_size=1, generator=torch.Generator().manual_seed(0), num_inference_steps=3, output_type="pt")
    assert torch.isfinite(images.images).all()
    with pytest.raises(ValueError, match="DDPMPlusScheduler.from_config"):
        pipe.log_likelihood(random_uint8_images(1))


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("variance_type", ["learned", "learned_range", "fixed_large_log"])
def test_every_prediction_type_with_learned_and_log_variances_is_finite(prediction_type, variance_type):
    learn_sigma = variance_type != "fixed_large_log"
    pipe = make_pipeline(learn_sigma=learn_sigma, prediction_type=prediction_type, variance_type=variance_type)
    images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=5, output_type="pt")
    assert torch.isfinite(images.images).all()
    bound = pipe.log_likelihood(random_uint8_images(2), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(bound.bits_per_dim).all() and (bound.bits_per_dim > 0).all()


# ------------------------------------------------------------------------------------------------------------------
# The exact bound against an independent float64 reference
# ------------------------------------------------------------------------------------------------------------------


def normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Φ(x) = erfc(-x/√2)/2, accurate far into the lower tail (`torch.special.ndtr` underflows below x ≈ -8)."""
    return 0.5 * torch.special.erfc(-x / math.sqrt(2))


def reference_bound_bpd(
    unet, x0, beta_start, beta_end, prediction_type, variance_type, generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(total bits/dim, per-term bits/dim (B, T)) from the formulas of Ho et al. 2020 (eq. 4-7, 13) in float64.

    The noise of image i at timestep t is the documented keyed noise (`keyed_noise`): the images' keys are drawn from
    `generator` (or from each of a list of per-image generators) first.
    """
    keys = noise_keys(generator, x0.shape[0])
    num_steps = NUM_TRAIN_TIMESTEPS
    betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    alphas = 1 - betas
    alpha_bar = torch.cumprod(alphas, 0)
    alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    posterior_variance = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)  # β̃_t (eq. 7), 0 at t = 0
    dims = x0[0].numel()
    batch = x0.shape[0]
    terms = torch.zeros(batch, num_steps, dtype=torch.float64)
    for t in reversed(range(num_steps)):
        eps = torch.from_numpy(np.stack([documented_noise(key, t, x0.shape[1:]) for key in keys]))
        x_t = alpha_bar[t].sqrt() * x0 + (1 - alpha_bar[t]).sqrt() * eps  # eq. 4
        output = unet(x_t, torch.full((batch,), t)).sample.double()
        output, v = output.split(x0.shape[1], dim=1) if variance_type == "learned_range" else (output, None)
        coeff_x0 = alpha_bar_prev[t].sqrt() * betas[t] / (1 - alpha_bar[t])
        coeff_xt = alphas[t].sqrt() * (1 - alpha_bar_prev[t]) / (1 - alpha_bar[t])
        if prediction_type == "mean":
            x0_hat = None
        elif prediction_type == "epsilon":
            x0_hat = (x_t - (1 - alpha_bar[t]).sqrt() * output) / alpha_bar[t].sqrt()
        elif prediction_type == "sample":
            x0_hat = output
        else:  # v_prediction: v = √ᾱ ε - √(1-ᾱ) x_0
            x0_hat = alpha_bar[t].sqrt() * x_t - (1 - alpha_bar[t]).sqrt() * output
        model_mean = output if prediction_type == "mean" else coeff_x0 * x0_hat + coeff_xt * x_t
        log_beta_tilde = torch.log(posterior_variance[max(t, 1)])  # β̃ at t = 0 replaced by β̃_1
        if variance_type == "fixed_small":
            model_log_var = log_beta_tilde * torch.ones_like(x0)
        elif variance_type == "fixed_large":
            model_log_var = torch.log(betas[t] if t > 0 else posterior_variance[1]) * torch.ones_like(x0)
        else:
            fraction = (v + 1) / 2
            model_log_var = fraction * torch.log(betas[t]) + (1 - fraction) * log_beta_tilde
        if t == 0:  # discretized decoder (eq. 13), bins x ± 1/255, edge bins open
            sigma = torch.exp(0.5 * model_log_var)
            upper = (x0 + 1 / 255 - model_mean) / sigma
            lower = (x0 - 1 / 255 - model_mean) / sigma
            # Φ(b) - Φ(a) = Φ(-a) - Φ(-b): take the difference on the side where both CDF values are small
            interior = torch.where(
                upper + lower > 0, normal_cdf(-lower) - normal_cdf(-upper), normal_cdf(upper) - normal_cdf(lower)
            )
            probability = torch.where(
                x0 < -0.999, normal_cdf(upper), torch.where(x0 > 0.999, normal_cdf(-lower), interior)
            )
            nats = -torch.log(probability)
        else:
            true_mean = coeff_x0 * x0 + coeff_xt * x_t
            true_log_var = torch.log(posterior_variance[t])
            nats = 0.5 * (
                -1
                + model_log_var
                - true_log_var
                + torch.exp(true_log_var - model_log_var)
                + (true_mean - model_mean) ** 2 * torch.exp(-model_log_var)
            )
        terms[:, t] = nats.reshape(batch, -1).sum(1) / (dims * math.log(2))
    prior_mean, prior_var = alpha_bar[-1].sqrt() * x0, 1 - alpha_bar[-1]
    prior = 0.5 * (-1 - torch.log(prior_var) + prior_var + prior_mean**2)
    prior_bpd = prior.reshape(batch, -1).sum(1) / (dims * math.log(2))
    return prior_bpd + terms.sum(1), terms


@pytest.mark.parametrize(
    ("prediction_type", "variance_type"),
    [
        ("epsilon", "fixed_small"),
        ("epsilon", "fixed_large"),
        ("sample", "fixed_small"),
        ("mean", "fixed_large"),
        ("v_prediction", "learned_range"),
    ],
)
@pytest.mark.parametrize("generator_kind", ["single", "list"])
def test_log_likelihood_matches_float64_reference(prediction_type, variance_type, generator_kind):
    config = {**SCHEDULER_CONFIG, "prediction_type": prediction_type, "variance_type": variance_type}
    pipe = make_pipeline(learn_sigma=variance_type == "learned_range", dtype=torch.float64, **config)
    with torch.no_grad():  # small outputs keep the decoder means within ~13 σ of the data (no far-tail bins)
        pipe.unet.conv_out.weight.mul_(0.05)
        pipe.unet.conv_out.bias.mul_(0.05)
    x0 = torch.from_numpy(random_uint8_images(2)).permute(0, 3, 1, 2).double() / 127.5 - 1

    def generator():
        return generators([5, 6]) if generator_kind == "list" else torch.Generator().manual_seed(5)

    result = pipe.log_likelihood(x0, generator=generator())
    rechunked = pipe.log_likelihood(x0, generator=generator(), max_batch_size=7)
    beta_range = (SCHEDULER_CONFIG["beta_start"], SCHEDULER_CONFIG["beta_end"])
    total, terms = reference_bound_bpd(pipe.unet, x0, *beta_range, prediction_type, variance_type, generator())
    assert isinstance(result, LikelihoodOutput)
    assert result.terms_bpd.dtype == torch.float64 and result.terms_bpd.shape == (2, NUM_TRAIN_TIMESTEPS)
    torch.testing.assert_close(result.terms_bpd, terms, rtol=1e-10, atol=0)
    torch.testing.assert_close(result.bits_per_dim, total, rtol=1e-10, atol=0)
    torch.testing.assert_close(result.bits_per_dim, result.prior_bpd + result.terms_bpd.sum(1), rtol=1e-12, atol=0)
    torch.testing.assert_close(rechunked.terms_bpd, terms, rtol=1e-10, atol=0)
    assert torch.equal(result.decoder_bpd, result.terms_bpd[:, 0])


def test_log_likelihood_accepts_uint8_arrays_pil_and_tensors():
    pipe = make_pipeline()
    pixels = random_uint8_images(2)
    nchw = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    inputs = {
        "float tensor": nchw.float() / 127.5 - 1,
        "uint8 tensor": nchw,
        "uint8 array": pixels,
        "PIL list": [PIL.Image.fromarray(image) for image in pixels],
    }
    bounds = {
        name: pipe.log_likelihood(images, generator=torch.Generator().manual_seed(0)).bits_per_dim
        for name, images in inputs.items()
    }
    for name, bound in bounds.items():
        assert torch.equal(bound, bounds["float tensor"]), name
    (bits_per_dim, prior, terms, decoder, x0_mse, eps_mse) = pipe.log_likelihood(
        pixels, generator=torch.Generator().manual_seed(0), return_dict=False
    )
    assert torch.equal(bits_per_dim, bounds["float tensor"]) and prior.shape == (2,) and terms.shape == (2, 20)
    assert decoder.shape == (2,) and x0_mse.shape == eps_mse.shape == (2, 20)


def test_log_likelihood_of_a_grey_pil_image_and_train_mode_is_restored():
    pipe = DDPMPlusPipeline(unet=tiny_unet(channels=1).train(), scheduler=DDPMPlusScheduler(**SCHEDULER_CONFIG))
    pipe.set_progress_bar_config(disable=True)
    grey = PIL.Image.fromarray(random_uint8_images(1, channels=1)[0, ..., 0], mode="L")
    bound = pipe.log_likelihood(grey, generator=torch.Generator().manual_seed(0)).bits_per_dim
    assert bound.shape == (1,) and torch.isfinite(bound).all()
    assert pipe.unet.training


# ------------------------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"batch_size": 1.5}, "batch_size must be a positive integer"),
        ({"output_type": "latent"}, "Unknown output_type 'latent'; valid choices are: pil, np, pt"),
        ({"num_inference_steps": 0}, r"between 1 and the scheduler's num_train_timesteps \(20\)"),
        ({"num_inference_steps": NUM_TRAIN_TIMESTEPS + 1}, r"between 1 and .* \(20\), got 21"),
        ({"batch_size": 2, "generator": [torch.Generator()]}, "got 1 generators for 2 images; pass one per image"),
    ],
)
def test_bad_sampling_arguments_raise_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        make_pipeline()(**{"num_inference_steps": 2, **call})


@pytest.mark.parametrize(
    ("learn_sigma", "variance_type", "message"),
    [
        (True, "fixed_small", "6 output channels, but the scheduler's variance_type='fixed_small' needs 3"),
        (False, "learned_range", "3 output channels, but the scheduler's variance_type='learned_range' needs 6"),
    ],
)
def test_unet_channels_must_fit_the_variance_type(learn_sigma, variance_type, message):
    scheduler = DDPMPlusScheduler(**SCHEDULER_CONFIG, variance_type=variance_type)
    with pytest.raises(ValueError, match=message):
        DDPMPlusPipeline(unet=tiny_unet(learn_sigma=learn_sigma), scheduler=scheduler)
    # a mismatching UNet swapped in after construction is caught when the pipeline runs
    pipe = make_pipeline(learn_sigma=not learn_sigma, variance_type=variance_type)
    pipe.unet = tiny_unet(learn_sigma=learn_sigma)
    with pytest.raises(ValueError, match=message):
        pipe(num_inference_steps=1)
    with pytest.raises(ValueError, match=message):
        pipe.log_likelihood(random_uint8_images(1))


def _images_at_level(level: float, channels: int = CHANNELS) -> torch.Tensor:
    return torch.full((1, channels, SAMPLE_SIZE, SAMPLE_SIZE), level / 127.5 - 1)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (_images_at_level(100.3), "not 8-bit data"),
        (_images_at_level(256), r"must lie in \[-1, 1\]"),
        (random_uint8_images(1).astype(np.float32) / 255, "Image arrays must be uint8"),
        (torch.zeros(CHANNELS, SAMPLE_SIZE, SAMPLE_SIZE), r"must have shape \(B, C, H, W\)"),
        (torch.zeros(1, CHANNELS, SAMPLE_SIZE, SAMPLE_SIZE, dtype=torch.int32), "uint8, float32 or float64"),
        (_images_at_level(0, channels=1), r"takes images of shape \(B, 3, 8, 8\), got \(1, 1, 8, 8\)"),
        (np.zeros((1, 2, SAMPLE_SIZE, SAMPLE_SIZE, 3), np.uint8), r"must have shape \(B, H, W, C\) or \(B, H, W\)"),
    ],
    ids=["off-grid", "out-of-range", "float-array", "no-batch", "int32", "wrong-channels", "5-d"],
)
def test_non_8bit_or_misshaped_images_are_rejected(images, message):
    with pytest.raises(ValueError, match=message):
        make_pipeline().log_likelihood(images)


def test_log_likelihood_needs_one_generator_per_image_and_a_positive_chunk_size():
    with pytest.raises(ValueError, match="got 1 generators for 2 images"):
        make_pipeline().log_likelihood(random_uint8_images(2), generator=generators([0]))
    with pytest.raises(ValueError, match="max_batch_size must be positive"):
        make_pipeline().log_likelihood(random_uint8_images(2), max_batch_size=0)


@pytest.mark.parametrize(
    "images",
    [
        torch.zeros(0, CHANNELS, SAMPLE_SIZE, SAMPLE_SIZE),
        np.zeros((0, SAMPLE_SIZE, SAMPLE_SIZE, CHANNELS), np.uint8),
        [],
    ],
    ids=["tensor", "array", "list"],
)
def test_an_empty_batch_is_refused(images):
    with pytest.raises(ValueError, match="needs at least one image, got an empty batch"):
        make_pipeline().log_likelihood(images)


@pytest.mark.parametrize("mode", ["YCbCr", "P", "CMYK", "RGBA", "I;16", "F"])
def test_pil_images_must_be_8bit_grey_or_colour(mode):
    """A YCbCr image would pass as RGB levels, a palette image as grey ones: every mode but L and RGB is refused."""
    image = PIL.Image.new(mode, (SAMPLE_SIZE, SAMPLE_SIZE))
    with pytest.raises(ValueError, match=f"mode 'L' or 'RGB'.*got mode '{mode}'"):
        make_pipeline().log_likelihood([image])


# ------------------------------------------------------------------------------------------------------------------
# `ddpm-plus sample`
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cli") / "pipeline"
    make_pipeline().save_pretrained(directory)
    return directory


def test_cli_sample_writes_grid_and_single_images(saved_pipeline, tmp_path, capsys):
    out = tmp_path / "samples" / "grid.png"
    argv = ["sample", "--model", str(saved_pipeline), "--num-images", "3", "--steps", "4", "--seed", "10"]
    assert cli_main([*argv, "--batch-size", "2", "--out", str(out)]) == 0

    folder = tmp_path / "samples" / "grid"
    names = sorted(path.name for path in folder.iterdir())
    assert names == ["000000.png", "000001.png", "000002.png", "manifest.json", "samples_3x8x8x3.npz"]
    singles = [folder / name for name in names[:3]]
    pipe = DDPMPlusPipeline.from_pretrained(saved_pipeline)
    pipe.set_progress_bar_config(disable=True)
    expected = [  # the same batches, generator seed + i for image i
        *pipe(batch_size=2, generator=generators([10, 11]), num_inference_steps=4).images,
        *pipe(batch_size=1, generator=generators([12]), num_inference_steps=4).images,
    ]
    for path, image in zip(singles, expected, strict=True):
        assert np.array_equal(np.asarray(PIL.Image.open(path)), np.asarray(image))
    grid = PIL.Image.open(out)
    assert grid.size == (2 * (SAMPLE_SIZE + 2) + 2, 2 * (SAMPLE_SIZE + 2) + 2)  # 2 columns x 2 rows, 2 px padding
    assert np.array_equal(np.asarray(grid)[2 : 2 + SAMPLE_SIZE, 2 : 2 + SAMPLE_SIZE], np.asarray(expected[0]))
    captured = capsys.readouterr()
    assert "images" in captured.err and "3/3" in captured.err  # the progress bar
    assert str(out) in captured.out


def test_cli_sample_rejects_bad_arguments(saved_pipeline, tmp_path):
    for bad in (["--out", str(tmp_path / "grid.jpg")], ["--num-images", "0", "--out", str(tmp_path / "g.png")]):
        with pytest.raises(SystemExit):
            cli_main(["sample", "--model", str(saved_pipeline), *bad])


# ------------------------------------------------------------------------------------------------------------------
# Loading: a readable error naming the file
# ------------------------------------------------------------------------------------------------------------------


def _break_folder(folder, damage: str):
    """Damage a copy of a saved pipeline folder; return what `from_pretrained` is given."""
    if damage == "no such path":
        return folder.parent / "no" / "such" / "folder"
    if damage == "an uncached Hub id":
        return "someone/uncached-ddpm"
    path = folder / damage.split()[-1]
    if damage.startswith("no "):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:40])
    return folder


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no model_index.json", r"model_index.json is missing"),
        ("corrupt model_index.json", r"model_index.json cannot be read \(truncated or corrupt"),
        ("corrupt unet/config.json", r"unet/config.json cannot be read"),
        ("no scheduler", r"scheduler/scheduler_config.json is missing"),
        ("no unet/diffusion_pytorch_model.safetensors", r"unet has no weights"),
        ("corrupt unet/diffusion_pytorch_model.safetensors", r"is not a complete safetensors file"),
        ("no such path", r"folder: no such folder, and not a Hub id \(owner/name\)"),
        ("an uncached Hub id", r"someone/uncached-ddpm: no such folder, and the Hub id is not in the local Hub cache"),
    ],
)
def test_from_pretrained_names_the_file_that_does_not_load(saved_pipeline, tmp_path, monkeypatch, damage, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    given = _break_folder(shutil.copytree(saved_pipeline, tmp_path / "pipeline"), damage)
    with pytest.raises(PipelineLoadError, match=message) as caught:
        DDPMPlusPipeline.from_pretrained(given)
    assert isinstance(caught.value, OSError) and isinstance(caught.value, ValueError)  # as diffusers raises
    error = caught.value  # no internal traceback chained to it
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_from_pretrained_refuses_a_folder_of_another_pipeline_kind(saved_pipeline, tmp_path):
    folder = shutil.copytree(saved_pipeline, tmp_path / "pipeline")
    index = json.loads((folder / "model_index.json").read_text())
    index.update(_class_name="StableDiffusionPipeline", vae=["diffusers", "AutoencoderKL"])
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(PipelineLoadError, match=r"describes a StableDiffusionPipeline with components scheduler, unet"):
        DDPMPlusPipeline.from_pretrained(folder)


def test_from_pretrained_needs_no_folder_of_a_component_given_in_its_place(saved_pipeline, tmp_path):
    folder = shutil.copytree(saved_pipeline, tmp_path / "pipeline")
    shutil.rmtree(folder / "scheduler")
    pipe = DDPMPlusPipeline.from_pretrained(folder, scheduler=DDIMScheduler(**SCHEDULER_CONFIG))
    assert isinstance(pipe.scheduler, DDIMScheduler)


def test_from_pretrained_names_corrupt_pickled_weights(saved_pipeline, tmp_path):
    folder = shutil.copytree(saved_pipeline, tmp_path / "pipeline")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(safetensors.torch.load_file(weights), folder / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    assert isinstance(DDPMPlusPipeline.from_pretrained(folder), DDPMPlusPipeline)  # .bin weights load as in diffusers
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(PipelineLoadError, match=r"Unable to load weights .*unet/diffusion_pytorch_model.bin"):
        DDPMPlusPipeline.from_pretrained(folder)


def test_from_pretrained_names_a_component_that_model_index_json_does_not_list(saved_pipeline, tmp_path):
    folder = shutil.copytree(saved_pipeline, tmp_path / "pipeline")
    index = json.loads((folder / "model_index.json").read_text())
    del index["scheduler"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(PipelineLoadError, match=r"model_index.json lists no scheduler; DDPMPlusPipeline needs both"):
        DDPMPlusPipeline.from_pretrained(folder)
    pipe = DDPMPlusPipeline.from_pretrained(folder, scheduler=DDIMScheduler(**SCHEDULER_CONFIG))  # given in its place
    assert isinstance(pipe.scheduler, DDIMScheduler)
