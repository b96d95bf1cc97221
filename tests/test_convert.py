"""improved-diffusion and guided-diffusion checkpoints converted to DDPM+ pipelines, against the upstream code.

The references in tests/openai_fixtures/ were computed by the upstream code itself (generate.py there) with random
weights that `random_state_dict` rebuilds here; no upstream code runs in the tests.
"""

import gzip
import json
import math
import pickle
import re
import shlex
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from keyed_noise import documented_noise, noise_keys
from openai_fixtures.weights import HERE as FIXTURES
from openai_fixtures.weights import random_state_dict, write_checkpoint
from tanh_decoder import tanh_decoder_nll

from ddpm_plus import DDPMPlusPipeline, DDPMPlusPosteriorPipeline
from ddpm_plus.cli import main
from ddpm_plus.cli_bpd import image_generators
from ddpm_plus.convert import (
    ConversionError,
    convert_checkpoint,
    convert_state_dict,
    describe_model,
    from_openai,
    parse_flags,
    unet_config,
)
from ddpm_plus.ownership import LOCK_FILE
from ddpm_plus.scheduling_ddpm_plus import respaced_timesteps

MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
CONVERTED = [
    "improved_cifar_like",
    "improved_class_cond",
    "improved_lsun_like",
    "guided_ffhq_like",
    "guided_class_cond",
]
REFUSED = ["guided_upsampler", "guided_classifier"]
REPO_ROOT = Path(__file__).parents[1]
# float32 round-off of the network: the largest difference allowed, relative to the output's largest magnitude
NETWORK_TOLERANCE = 1e-5
# respaced samples on the [0, 1] scale (1/80 of an 8-bit level): diffusers' float32 schedule tables (upstream rounds
# float64 ones) differ by round-off that x̂_0 = (x_t - √(1-ᾱ_t) ε̂) / √ᾱ_t amplifies where ᾱ_t is small.
SAMPLE_TOLERANCE = 5e-5


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("openai_checkpoints")
    return {name: write_checkpoint(MANIFEST[name], folder / f"{name}.pt") for name in CONVERTED + REFUSED}


@pytest.fixture(scope="module")
def converted(checkpoints: dict[str, Path]):
    @cache
    def convert(name: str) -> DDPMPlusPipeline:
        entry = MANIFEST[name]
        pipe = from_openai(checkpoints[name], entry["flags"], source=entry["source"])
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return convert


@cache
def reference(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{name}.npz") as arrays:
        return dict(arrays)


def labels_of(arrays: dict[str, np.ndarray], key: str) -> dict[str, torch.Tensor]:
    return {"class_labels": torch.from_numpy(arrays[key])} if key in arrays else {}


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, tolerance: float) -> None:
    scale = expected.abs().max().item()
    error = (actual.double() - expected.double()).abs().max().item()
    assert error <= tolerance * scale, f"max error {error:.3g} > {tolerance:g} × scale {scale:.3g}"


def test_fixtures_cover_every_configuration() -> None:
    assert sorted(MANIFEST) == sorted(CONVERTED + REFUSED)
    assert {MANIFEST[name]["source"] for name in CONVERTED} == {"improved-diffusion", "guided-diffusion"}


# --------------------------------------------------------------------------------------------- flags and configs


@pytest.mark.parametrize("name", CONVERTED)
def test_flags_are_read_as_upstream_reads_them(name: str) -> None:
    """Each source's defaults and types: the flags give exactly the arguments upstream's parser gave."""
    entry = MANIFEST[name]
    values, _ = parse_flags(entry["flags"], entry["source"])
    assert values == entry["upstream_args"]


def test_sources_differ_in_timestep_rescaling() -> None:
    improved, _ = parse_flags("", "improved-diffusion")
    guided, _ = parse_flags("", "guided-diffusion")
    assert improved["rescale_timesteps"] is True and guided["rescale_timesteps"] is False


@pytest.mark.parametrize("name", CONVERTED)
def test_schedule_is_upstreams(name: str, converted) -> None:
    """The scheduler's float64 β_t are upstream's, and the float32 sampling table rounds them."""
    scheduler = converted(name).scheduler
    betas = torch.from_numpy(reference(name)["betas"])
    torch.testing.assert_close(scheduler.betas_f64, betas, rtol=1e-12, atol=0)
    torch.testing.assert_close(scheduler.betas, betas.float(), rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("improved_cifar_like", {"variance_type": "learned_range", "prediction_type": "epsilon", "time": "learned"}),
        ("improved_class_cond", {"variance_type": "fixed_small", "prediction_type": "sample", "time": "learned"}),
        ("improved_lsun_like", {"variance_type": "fixed_large", "prediction_type": "epsilon", "time": "positional"}),
        ("guided_ffhq_like", {"variance_type": "learned_range", "prediction_type": "epsilon", "time": "positional"}),
        ("guided_class_cond", {"variance_type": "fixed_large", "prediction_type": "sample", "time": "learned"}),
    ],
)
def test_configs_follow_the_flags(name: str, expected: dict, converted) -> None:
    pipe = converted(name)
    args = MANIFEST[name]["upstream_args"]
    assert pipe.scheduler.config.variance_type == expected["variance_type"]
    assert pipe.scheduler.config.prediction_type == expected["prediction_type"]
    assert pipe.scheduler.config.clip_sample is True
    assert pipe.unet.config.time_embedding_type == expected["time"]
    assert pipe.unet.config.num_class_embeds == (1000 if args["class_cond"] else None)
    scale_shift = "scale_shift" if args["use_scale_shift_norm"] else "default"
    assert pipe.unet.config.resnet_time_scale_shift == scale_shift
    assert pipe.unet.config.downsample_type == ("resnet" if args.get("resblock_updown") else "conv")


# --------------------------------------------------------------------------------------------- exact network


@pytest.mark.parametrize("name", CONVERTED)
def test_network_outputs_equal_upstream(name: str, converted) -> None:
    """The ε/x₀ channels and the variance channels, at t = 0, 1, T/2 and T-1, to float32 round-off."""
    pipe = converted(name)
    arrays = reference(name)
    with torch.no_grad():
        output = pipe.unet(
            torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["t"]), **labels_of(arrays, "y")
        ).sample
    expected = torch.from_numpy(arrays["output"])
    assert output.shape == expected.shape
    for part in expected.split(3, dim=1):  # mean channels, then (learned σ) variance channels
        columns = slice(0, 3) if part.data_ptr() == expected.data_ptr() else slice(3, 6)
        assert_close_to_scale(output[:, columns], part, NETWORK_TOLERANCE)


@pytest.mark.parametrize("name", CONVERTED)
def test_time_embedding_equals_upstream_at_every_timestep(name: str, converted) -> None:
    """time_embed of the (rescaled) sinusoids of every t = 0..T-1; with rescaled timesteps the learned table holds
    exactly upstream's float32 sinusoids."""
    unet = converted(name).unet
    timesteps = torch.arange(len(reference(name)["betas"]))
    with torch.no_grad():
        embeddings = unet.time_embedding(unet.time_proj(timesteps).float())
    assert_close_to_scale(embeddings, torch.from_numpy(reference(name)["embeddings"]), NETWORK_TOLERANCE)


def test_fp16_checkpoint_is_upcast_exactly(checkpoints: dict[str, Path], converted) -> None:
    stored = torch.load(checkpoints["guided_ffhq_like"], weights_only=True)
    assert stored["input_blocks.1.0.in_layers.2.weight"].dtype == torch.float16  # a use_fp16 checkpoint
    converted_weight = converted("guided_ffhq_like").unet.down_blocks[0].resnets[0].conv1.weight
    assert converted_weight.dtype == torch.float32
    assert torch.equal(converted_weight, stored["input_blocks.1.0.in_layers.2.weight"].float())


def test_attention_orders_split_qkv_differently(converted) -> None:
    """Legacy order: head by head, then q/k/v; new order: q/k/v, then heads (guided_class_cond)."""
    entry = MANIFEST["guided_class_cond"]
    state = random_state_dict(entry["state_dict"], entry["seed"])
    qkv = state["middle_block.1.qkv.weight"][..., 0]
    attention = converted("guided_class_cond").unet.mid_block.attentions[0]
    torch.testing.assert_close(attention.to_k.weight, qkv[qkv.shape[1] : 2 * qkv.shape[1]], rtol=0, atol=0)
    entry = MANIFEST["improved_cifar_like"]
    state = random_state_dict(entry["state_dict"], entry["seed"])
    qkv = state["middle_block.1.qkv.weight"][..., 0]
    channels = qkv.shape[1]
    head_dim = channels // 2  # --num_heads 2
    attention = converted("improved_cifar_like").unet.mid_block.attentions[0]
    first_head_k = qkv[head_dim : 2 * head_dim]  # head 0: rows [q₀, k₀, v₀]
    torch.testing.assert_close(attention.to_k.weight[:head_dim], first_head_k, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("name", CONVERTED)
def test_respaced_timesteps_are_upstreams(name: str) -> None:
    entry = MANIFEST[name]
    num_steps = entry["upstream_args"]["diffusion_steps"]
    assert respaced_timesteps(num_steps, entry["respacing"]) == reference(name)["sample_timesteps"].tolist()


@pytest.mark.parametrize("name", CONVERTED)
def test_respaced_samples_equal_p_sample_loop(name: str, converted) -> None:
    """Same start noise and per-step noise (one generator), learned variances on the respaced β included."""
    arrays = reference(name)
    images = converted(name)(
        batch_size=2,
        generator=torch.Generator().manual_seed(1234),
        timestep_respacing=MANIFEST[name]["respacing"],
        output_type="pt",
        **labels_of(arrays, "sample_labels"),
    ).images
    expected = (torch.from_numpy(arrays["samples"]) / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(images, expected, rtol=0, atol=SAMPLE_TOLERANCE)


@pytest.mark.parametrize(
    ("num_steps", "spacing", "expected"),
    [
        (10, "4", [9, 6, 3, 0]),  # strides of 9/3: positions 0, 3, 6, 9
        (10, "2,2", [9, 5, 4, 0]),  # two sections of 5: their first and last timesteps
        (11, "1,1", [6, 0]),  # the first section has the extra step: 0..5 and 6..10
        (10, "ddim5", [8, 6, 4, 2, 0]),
        (7, "3", [6, 3, 0]),
    ],
)
def test_respacing_by_hand(num_steps: int, spacing: str, expected: list[int]) -> None:
    assert respaced_timesteps(num_steps, spacing) == expected


@pytest.mark.parametrize(
    ("num_steps", "count"),
    [
        (4000, 50),
        (4000, 100),
        (4000, 250),
        (4000, 1000),
        (1000, 25),
        (1000, 50),
        (1000, 100),
        (1000, 250),
        (1000, 1000),
    ],
)
def test_one_section_equals_diffusers_linspace(num_steps: int, count: int) -> None:
    """For one section count N, diffusers' timestep_spacing="linspace" keeps the same timesteps (documented)."""
    scheduler = DDPMScheduler(num_train_timesteps=num_steps, timestep_spacing="linspace")
    scheduler.set_timesteps(count)
    assert scheduler.timesteps.tolist() == respaced_timesteps(num_steps, str(count))


@pytest.mark.parametrize("spacing", ["", "abc", "10,", "ddim", "0", "ddim7", "11"])
def test_bad_respacing_is_one_line(spacing: str) -> None:
    with pytest.raises(ValueError, match="timestep_respacing") as error:
        respaced_timesteps(10, spacing)
    assert "\n" not in str(error.value)


def test_class_labels_are_checked(converted) -> None:
    pipe = converted("guided_class_cond")
    with pytest.raises(ValueError, match="class-conditional"):
        pipe(batch_size=1, num_inference_steps=2)
    with pytest.raises(ValueError, match="outside 0..999"):
        pipe(batch_size=1, num_inference_steps=2, class_labels=1000)
    with pytest.raises(ValueError, match="2 class labels for 1 images"):
        pipe(batch_size=1, num_inference_steps=2, class_labels=[1, 2])
    with pytest.raises(ValueError, match="unconditional"):
        converted("improved_lsun_like")(batch_size=1, num_inference_steps=2, class_labels=3)
    one = pipe(batch_size=2, num_inference_steps=2, class_labels=7, generator=torch.Generator().manual_seed(0))
    each = pipe(batch_size=2, num_inference_steps=2, class_labels=[7, 7], generator=torch.Generator().manual_seed(0))
    assert np.array_equal(np.asarray(one.images[0]), np.asarray(each.images[0]))


# --------------------------------------------------------------------------------------------- bits/dim


def bpd_reference(name: str) -> dict[str, np.ndarray]:
    return {key.removeprefix("bpd_"): value for key, value in reference(name).items() if key.startswith("bpd_")}


def write_images(images: np.ndarray, folder: Path) -> Path:
    from PIL import Image

    folder.mkdir()
    for index, image in enumerate(images):
        Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{index:03d}.png")
    return folder


def tanh_decoder_bpd(x0: torch.Tensor, mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """improved-diffusion's decoder term in bits/dim, computed in float32 as upstream computes it (where tanh rounds
    to 1 in float32, a bin's mass is 0 and takes the floor)."""
    nll = tanh_decoder_nll(x0.float(), mean.float(), 0.5 * log_variance.float())
    return nll.flatten(1).double().mean(1) / math.log(2.0)


def decoder_moments(pipe: DDPMPlusPipeline, images: np.ndarray, labels: dict) -> tuple[torch.Tensor, ...]:
    """x_0 and the moments of p(x_0 | x_1) that `ddpm-plus bpd --seed 0 --clip-denoised` uses for the decoder, with
    the documented keyed noise of timestep 0."""
    x0 = torch.from_numpy(images).double() / 127.5 - 1
    keys = noise_keys(image_generators(0, range(len(images))), len(images))
    noise = torch.from_numpy(np.stack([documented_noise(key, 0, x0.shape[1:]) for key in keys]))
    scheduler = pipe.scheduler
    x_t = scheduler.q_sample(x0, noise, 0)
    with torch.no_grad():
        output = pipe.unet(x_t.float(), torch.zeros(len(images), dtype=torch.long), **labels).sample.double()
    moments = scheduler.p_mean_variance(output, x_t, 0, clip_denoised=True)
    return x0, moments.mean, moments.log_variance


def assert_terms_equal_calc_bpd_loop(
    terms: np.ndarray, prior: np.ndarray, decoder_moments: tuple, expected: dict[str, np.ndarray]
) -> None:
    """Every KL term and the prior are upstream's; upstream's decoder term (t = 0) is the tanh approximation of our
    decoder's moments, so the decoders differ only by exact Φ against its approximation and floor."""
    np.testing.assert_allclose(terms[:, 1:], expected["vb"][:, 1:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prior, expected["prior_bpd"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(tanh_decoder_bpd(*decoder_moments), expected["vb"][:, 0], rtol=1e-5)


def test_bpd_command_equals_calc_bpd_loop(converted, tmp_path: Path) -> None:
    """`ddpm-plus bpd --num-timesteps full --clip-denoised` on the converted CIFAR-10-like model: every KL term (mean
    over the images), the prior and the totals without the decoder equal calc_bpd_loop's; the decoder's moments too."""
    expected = bpd_reference("improved_cifar_like")
    pipe = converted("improved_cifar_like")
    pipe.save_pretrained(tmp_path / "model")
    data = write_images(expected["images"], tmp_path / "images")
    report_path = tmp_path / "bpd.json"
    argv = [
        "bpd",
        "--model",
        str(tmp_path / "model"),
        "--data",
        str(data),
        "--split",
        "train",
        "--num-timesteps",
        "full",
        "--clip-denoised",
        "--seed",
        "0",
        "--device",
        "cpu",
        "--output",
        str(report_path),
    ]
    assert main(argv) == 0
    report = json.loads(report_path.read_text())
    mean_terms = np.array(report["summary"]["mean_terms_bpd"])
    np.testing.assert_allclose(mean_terms[1:], expected["vb"].mean(0)[1:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(report["summary"]["mean_prior_bpd"], expected["prior_bpd"].mean(), rtol=1e-6)
    without_decoder = [image["bpd"] - image["decoder_bpd"] for image in report["images"]]
    np.testing.assert_allclose(without_decoder, expected["total_bpd"] - expected["vb"][:, 0], rtol=1e-5)
    moments = decoder_moments(pipe, expected["images"], {})
    np.testing.assert_allclose(tanh_decoder_bpd(*moments), expected["vb"][:, 0], rtol=1e-5)
    decoders = [image["decoder_bpd"] for image in report["images"]]
    assert np.abs(np.array(decoders) - expected["vb"][:, 0]).max() < 0.01  # exact Φ against tanh: measured 0.0026


def test_class_conditional_bound_equals_calc_bpd_loop(converted) -> None:
    """pipe.log_likelihood with class labels, per image and term (improved_class_cond: x₀ prediction, β̃). The random
    network's x̂_0 lies far from the images, so upstream's decoder sits on its floor and ours is far above it."""
    expected = bpd_reference("improved_class_cond")
    pipe = converted("improved_class_cond")
    labels = torch.from_numpy(expected["labels"])
    bound = pipe.log_likelihood(
        torch.from_numpy(expected["images"]),
        generator=image_generators(0, range(len(expected["images"]))),
        clip_denoised=True,
        class_labels=labels,
    )
    moments = decoder_moments(pipe, expected["images"], {"class_labels": labels})
    assert_terms_equal_calc_bpd_loop(bound.terms_bpd.numpy(), bound.prior_bpd.numpy(), moments, expected)


def test_bpd_command_refuses_class_conditional_models(converted, tmp_path: Path, capsys) -> None:
    converted("guided_class_cond").save_pretrained(tmp_path / "model")
    assert main(["bpd", "--model", str(tmp_path / "model"), "--data", "digits", "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert "class-conditional" in error and len(error.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------- posterior sampling


@pytest.mark.parametrize(("operator", "options"), [("inpainting", "mask"), ("super_resolution", "factor")])
def test_posterior_sampling_on_the_ffhq_like_model(operator: str, options: str, converted) -> None:
    """DDPMPlusPosteriorPipeline with the converted DPS-FFHQ-like model (learned σ, resblock_updown): the guidance
    pulls A x̂ towards the measurement compared with the unguided sample of the same noise."""
    pipe = converted("guided_ffhq_like")
    posterior = DDPMPlusPosteriorPipeline(unet=pipe.unet, scheduler=pipe.scheduler)
    posterior.set_progress_bar_config(disable=True)
    truth = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    if options == "mask":
        kwargs = {"mask": (torch.arange(64) < 32).float().expand(1, 1, 64, 64).expand(1, 3, 64, 64)}
    else:
        kwargs = {"factor": 4}
    from ddpm_plus.pipeline_ddpm_plus_posterior import make_operator

    measure = make_operator(operator, **kwargs)
    measurement = measure(truth)

    def run(scale: float) -> torch.Tensor:
        return (
            posterior(
                measurement,
                operator,
                noise_level=0.05,
                guidance_scale=scale,
                num_inference_steps=10,
                generator=torch.Generator().manual_seed(1),
                output_type="pt",
                **kwargs,
            ).images
            * 2
            - 1
        )

    guided, unguided = run(1.0), run(0.0)
    assert torch.isfinite(guided).all()
    assert (measure(guided) - measurement).square().mean() < 0.5 * (measure(unguided) - measurement).square().mean()


# --------------------------------------------------------------------------------------------- saving and loading


@pytest.mark.parametrize("name", ["improved_lsun_like", "improved_cifar_like"])
def test_round_trip_through_save_and_plain_diffusers(name: str, converted, tmp_path: Path) -> None:
    """save_pretrained → DDPMPlusPipeline.from_pretrained gives the same samples, and so does plain diffusers'
    DDPMPipeline with its DDPMScheduler (fixed σ² = β and learned σ)."""
    pipe = converted(name)
    pipe.save_pretrained(tmp_path / "saved")
    loaded = DDPMPlusPipeline.from_pretrained(tmp_path / "saved")
    loaded.set_progress_bar_config(disable=True)
    plain = DDPMPipeline(
        unet=UNet2DModel.from_pretrained(tmp_path / "saved", subfolder="unet"),
        scheduler=DDPMScheduler.from_pretrained(tmp_path / "saved", subfolder="scheduler"),
    )
    plain.set_progress_bar_config(disable=True)
    runs = [
        model(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(3), output_type="np").images
        for model in (pipe, loaded, plain)
    ]
    assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[0], runs[2])


@pytest.mark.parametrize("name", ["improved_cifar_like", "guided_class_cond"])
def test_convert_command_writes_a_loadable_folder_with_a_card(name: str, checkpoints, converted, tmp_path) -> None:
    entry = MANIFEST[name]
    out = tmp_path / "converted"
    argv = [
        "convert",
        "--from",
        entry["source"],
        "--checkpoint",
        str(checkpoints[name]),
        "--flags",
        entry["flags"],
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    loaded = DDPMPlusPipeline.from_pretrained(out)
    arrays = reference(name)
    with torch.no_grad():
        output = loaded.unet(torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["t"]), **labels_of(arrays, "y"))
    assert_close_to_scale(output.sample, torch.from_numpy(arrays["output"]), NETWORK_TOLERANCE)
    card = (out / "README.md").read_text()
    import hashlib

    assert hashlib.sha256(checkpoints[name].read_bytes()).hexdigest() in card
    assert f"openai/{entry['source']}" in card and "MIT-licensed" in card
    assert "license: mit" in card
    assert "--diffusion_steps" in card
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary folder left


# --------------------------------------------------------------------------------------------- released models

with gzip.open(FIXTURES / "readme_checkpoints.json.gz", "rt") as _file:
    README_CHECKPOINTS = json.load(_file)


def conversion_verdict(row: dict) -> str | None:
    """None when the flags of a README checkpoint describe a model that converts, else the refusal."""
    try:
        describe_model(row["flags"], row["source"])
    except ConversionError as error:
        return str(error)
    return None if row["state_dict_shapes"] is not None else "not a diffusion model"


@pytest.mark.parametrize("row", README_CHECKPOINTS, ids=lambda row: row["checkpoint"])
def test_released_architectures_convert_key_for_key(row: dict) -> None:
    """The state dict that upstream builds from each released checkpoint's flags (its keys and shapes, recorded on
    the meta device) maps onto the UNet2DModel of those flags, every key used and every shape equal; the refused ones
    are refused from their flags."""
    if conversion_verdict(row) is not None:
        assert row["checkpoint"] not in CONVERTIBLE_RELEASES
        return
    assert row["checkpoint"] in CONVERTIBLE_RELEASES
    model, _ = describe_model(row["flags"], row["source"])
    state_dict = {key: torch.empty(shape, device="meta") for key, shape in row["state_dict_shapes"].items()}
    with torch.device("meta"):
        unet = UNet2DModel(**unet_config(model))
    weights = convert_state_dict(state_dict, model)
    assert set(weights) == set(unet.state_dict())
    assert all(weights[key].shape == value.shape for key, value in unet.state_dict().items())
    table = model.num_steps * model.flags["num_channels"] if model.rescaled_timesteps else 0
    upstream_parameters = sum(math.prod(shape) for shape in row["state_dict_shapes"].values())
    assert sum(value.numel() for value in unet.parameters()) == upstream_parameters + table


CONVERTIBLE_RELEASES = {
    "cifar10_uncond_50M_500K.pt",
    "cifar10_uncond_vlb_50M_500K.pt",
    "lsun_uncond_100M_1200K_bs128.pt",
    "lsun_uncond_100M_2400K_bs64.pt",
    "64x64_diffusion.pt",
    "256x256_diffusion.pt",
    "256x256_diffusion_uncond.pt",
    "lsun_bedroom.pt",
    "lsun_cat.pt",
    "lsun_horse.pt",
    "lsun_horse_nodropout.pt",
}


def docs_table() -> dict[str, str]:
    """checkpoint → ✔ or ✗, from the table of docs/converting.md."""
    text = (REPO_ROOT / "docs" / "converting.md").read_text(encoding="utf-8")
    return dict(re.findall(r"^\| `?[\w-]+`? \| `([\w.]+)` \| ([✔✗]) \|", text, flags=re.MULTILINE))


def test_docs_table_lists_every_released_checkpoint_with_its_verdict() -> None:
    table = docs_table()
    assert sorted(table) == sorted(row["checkpoint"] for row in README_CHECKPOINTS)
    for row in README_CHECKPOINTS:
        assert table[row["checkpoint"]] == ("✔" if conversion_verdict(row) is None else "✗"), row["checkpoint"]


def test_docs_convert_commands_parse_and_convert() -> None:
    """Every `ddpm-plus convert` command of docs/converting.md is accepted by the real parser, and its flags describe
    a model that converts."""
    from ddpm_plus.cli import build_parser

    text = (REPO_ROOT / "docs" / "converting.md").read_text(encoding="utf-8")
    commands = [
        shlex.split(line)
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
        for line in block.replace("\\\n", " ").splitlines()
        if line.startswith("ddpm-plus convert") and "$" not in line  # not the template with $MODEL_FLAGS
    ]
    assert len(commands) >= 4
    for words in commands:
        args = build_parser().parse_args(words[1:])
        describe_model(args.flags, args.source)


# --------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("source", "flags", "reason"),
    [
        # improved-diffusion's ImageNet-64 models: 4 heads over levels of 384 and 512 channels
        (
            "improved-diffusion",
            "--image_size 64 --num_channels 128 --num_res_blocks 3 --learn_sigma True",
            "one attention head width",
        ),
        # guided-diffusion's 512x512 model
        (
            "guided-diffusion",
            "--image_size 512 --num_channels 256 --num_head_channels 64 --learn_sigma True",
            "first multiplier must be 1",
        ),
        ("guided-diffusion", "--large_size 256 --small_size 64 --num_channels 192", "upsampler"),
        ("guided-diffusion", "--image_size 128 --classifier_width 128 --classifier_depth 2", "classifier"),
        ("improved-diffusion", "--image_size 48", "no channel_mult"),
        ("improved-diffusion", "--num_head_channels 64", "unknown improved-diffusion flag --num_head_channels"),
        ("improved-diffusion", "--learn_sigma maybe", "takes a boolean"),
        ("improved-diffusion", "--num_channels", "has no value"),
        ("improved-diffusion", "image_size 32", "expected --name value"),
        ("improved-diffusion", '--image_size "32', "do not parse"),
        ("guided-diffusion", "--noise_schedule sqrt", "linear or cosine"),
        ("openai", "--image_size 32", "--from must be one of"),
    ],
)
def test_unrepresentable_models_and_bad_flags_are_refused(source: str, flags: str, reason: str) -> None:
    with pytest.raises(ConversionError, match=re.escape(reason)) as error:
        describe_model(flags, source)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("name", "reason"), [("guided_upsampler", "upsampler"), ("guided_classifier", "classifier")])
def test_upsampler_and_classifier_checkpoints_are_refused(name: str, reason: str, checkpoints) -> None:
    """Even with flags that would describe a diffusion model, the weights tell what the checkpoint is."""
    with pytest.raises(ConversionError, match=reason):
        convert_checkpoint(
            checkpoints[name], "--image_size 64 --num_channels 32 --num_head_channels 32", "guided-diffusion"
        )


@pytest.mark.parametrize(
    ("name", "wrong_flag", "key", "flag"),
    [
        ("guided_class_cond", "--class_cond False", "label_emb.weight", "--class_cond"),
        ("guided_ffhq_like", "--learn_sigma False", "out.2.weight", "--learn_sigma"),
        ("guided_ffhq_like", "--use_scale_shift_norm False", "emb_layers.1.weight", "--use_scale_shift_norm"),
        ("guided_ffhq_like", "--num_res_blocks 2", "_blocks.", "--num_res_blocks"),
        ("guided_ffhq_like", "--num_channels 64", "input_blocks.0.0.weight", "--num_channels"),
    ],
)
def test_checkpoint_that_does_not_fit_its_flags_names_key_and_flag(name, wrong_flag, key, flag, checkpoints) -> None:
    """The flags with one value changed (the last of a repeated flag wins, as in argparse)."""
    with pytest.raises(ConversionError) as error:
        convert_checkpoint(checkpoints[name], MANIFEST[name]["flags"] + " " + wrong_flag, "guided-diffusion")
    message = str(error.value)
    assert key in message and flag in message and "\n" not in message


def test_bad_checkpoint_files_are_refused(tmp_path: Path) -> None:
    flags = MANIFEST["improved_lsun_like"]["flags"]
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(ConversionError, match="not a PyTorch checkpoint"):
        convert_checkpoint(text, flags, "improved-diffusion")
    code = tmp_path / "code.pt"
    torch.save({"weights": torch.zeros(1), "trainer": argparse_namespace()}, code)
    with pytest.raises(ConversionError, match="needs code to load"):
        convert_checkpoint(code, flags, "improved-diffusion")
    nested = tmp_path / "nested.pt"
    torch.save({"model": {"w": torch.zeros(1)}}, nested)
    with pytest.raises(ConversionError, match="not a flat state dict"):
        convert_checkpoint(nested, flags, "improved-diffusion")
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(ConversionError, match="not a state dict"):
        convert_checkpoint(listed, flags, "improved-diffusion")
    entry = MANIFEST["improved_lsun_like"]
    state = random_state_dict(entry["state_dict"], entry["seed"])
    state["out.2.bias"][0] = float("nan")
    broken = tmp_path / "nan.pt"
    torch.save(state, broken)
    with pytest.raises(ConversionError, match="out.2.bias holds NaN"):
        convert_checkpoint(broken, flags, "improved-diffusion")


def argparse_namespace():
    import argparse

    return argparse.Namespace(lr=1e-4)


def test_pickle_code_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    with path.open("wb") as handle:
        pickle.dump({"x": Payload()}, handle)
    with pytest.raises(ConversionError):
        convert_checkpoint(path, "", "improved-diffusion")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--flags", "--image_size 32 --num_channels"], "has no value"),
        (["--flags", "--image_size 48"], "no channel_mult"),
        (["--checkpoint", "missing.pt"], "is not a file"),
        (["--out", "full"], "is not empty; pass --overwrite"),
        (["--out", "file.txt"], "exists and is not a directory"),
        (["--checkpoint", "notes.pt"], "not a PyTorch checkpoint"),
    ],
)
def test_convert_command_errors_are_one_line_and_write_nothing(args, message, checkpoints, tmp_path, capsys) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("keep")
    (tmp_path / "file.txt").write_text("file")
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    options = {
        "--from": "improved-diffusion",
        "--checkpoint": str(checkpoints["improved_lsun_like"]),
        "--flags": MANIFEST["improved_lsun_like"]["flags"],
        "--out": str(tmp_path / "out"),
    }
    options.update({args[0]: str(tmp_path / args[1]) if args[0] in ("--out", "--checkpoint") else args[1]})
    before = sorted(path.name for path in tmp_path.iterdir())
    argv = ["convert"] + [item for pair in options.items() for item in pair]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1
    # the empty lock file beside --out stays (docs/failure-behaviour.md, run ownership)
    assert sorted(path.name for path in tmp_path.iterdir() if not path.name.endswith(LOCK_FILE)) == before
    assert (tmp_path / "full" / "keep.txt").read_text() == "keep"


def test_unwritable_out_is_refused(checkpoints, tmp_path: Path, capsys) -> None:
    """/proc takes no new files, even from root."""
    argv = [
        "convert",
        "--from",
        "improved-diffusion",
        "--checkpoint",
        str(checkpoints["improved_lsun_like"]),
        "--flags",
        MANIFEST["improved_lsun_like"]["flags"],
        "--out",
        "/proc/ddpm-plus-convert-test",
    ]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "not writable" in error and len(error.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------- the sample command


def test_sample_command_takes_class_label_and_timestep_respacing(converted, tmp_path: Path) -> None:
    """`ddpm-plus sample --class-label 7 --timestep-respacing 6,2`: image i is pipe(class_labels=7,
    timestep_respacing="6,2") from the noise of seed + i, and the manifest records both."""
    from PIL import Image

    pipe = converted("guided_class_cond")
    pipe.save_pretrained(tmp_path / "model")
    out = tmp_path / "grid.png"
    argv = [
        "sample",
        "--model",
        str(tmp_path / "model"),
        "--num-images",
        "2",
        "--class-label",
        "7",
        "--timestep-respacing",
        "6,2",
        "--seed",
        "5",
        "--batch-size",
        "2",
        "--num-threads",
        "1",  # as this process computes the reference (tests run one torch thread)
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    expected = pipe(
        batch_size=2,
        generator=[torch.Generator().manual_seed(5 + i) for i in range(2)],
        class_labels=7,
        timestep_respacing="6,2",
        output_type="np",
    ).images
    for index in range(2):
        written = np.asarray(Image.open(tmp_path / "grid" / f"{index:06d}.png"))
        assert np.array_equal(written, pipe.numpy_to_pil(expected[index : index + 1])[0])
    manifest = json.loads((tmp_path / "grid" / "manifest.json").read_text())
    assert manifest["class_label"] == 7 and manifest["timestep_respacing"] == "6,2" and manifest["steps"] == 8


@pytest.mark.parametrize(
    ("name", "extra", "message"),
    [
        ("guided_class_cond", [], "class-conditional (1000 classes): pass class_labels"),
        ("guided_class_cond", ["--class-label", "1000"], "outside 0..999"),
        ("improved_lsun_like", ["--class-label", "3"], "unconditional"),
        ("improved_lsun_like", ["--timestep-respacing", "ddim999"], "no integer stride"),
        ("improved_lsun_like", ["--timestep-respacing", "4", "--steps", "4"], "not both"),
    ],
)
def test_sample_command_refuses_labels_and_spacings_that_do_not_fit(name, extra, message, converted, tmp_path, capsys):
    converted(name).save_pretrained(tmp_path / "model")
    argv = ["sample", "--model", str(tmp_path / "model"), "--num-images", "1", "--out", str(tmp_path / "grid.png")]
    assert main(argv + extra) == 2
    error = capsys.readouterr().err  # after the bar of diffusers' pipeline loading, where the model loads
    assert message in error.strip().splitlines()[-1] and error.count("error:") == 1
    assert not (tmp_path / "grid").exists() or not any((tmp_path / "grid").glob("*.png"))


# --------------------------------------------------------------------------------------------- writing the folder


def convert_argv(checkpoint: Path, name: str, out: Path, *extra: str) -> list[str]:
    entry = MANIFEST[name]
    return [
        "convert",
        "--from",
        entry["source"],
        "--checkpoint",
        str(checkpoint),
        "--flags",
        entry["flags"],
        "--out",
        str(out),
        *extra,
    ]


def test_overwrite_replaces_a_folder_and_a_failed_write_leaves_it_as_it_was(checkpoints, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    checkpoint = checkpoints["improved_lsun_like"]

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr("ddpm_plus.model_card.write_model_card", full_disk)
        assert main(convert_argv(checkpoint, "improved_lsun_like", out, "--overwrite")) == 2
    error = capsys.readouterr().err
    assert "No space left on device" in error and "as it was" in error and len(error.strip().splitlines()) == 1
    assert sorted(path.name for path in out.iterdir()) == ["old.txt"]
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary folder left
    assert main(convert_argv(checkpoint, "improved_lsun_like", out, "--overwrite")) == 0
    assert not (out / "old.txt").exists() and (out / "model_index.json").is_file()


def test_notes_name_the_flags_without_effect_and_the_card_the_respacing(checkpoints, tmp_path, capsys) -> None:
    """Training-only and sampling-script flags are named; --timestep_respacing goes into the card's snippet."""
    out = tmp_path / "out"
    argv = convert_argv(checkpoints["guided_class_cond"], "guided_class_cond", out)
    argv[argv.index("--flags") + 1] += " --use_kl True --batch_size 4 --timestep_respacing 6,2"
    assert main(argv) == 0
    error = capsys.readouterr().err
    assert "--use_kl True changes the training loss only" in error
    assert "--batch_size is a flag of upstream's sampling scripts" in error
    card = (out / "README.md").read_text()
    assert "timestep_respacing='6,2', class_labels=0" in card
    assert "A class-conditional image diffusion model" in card


def test_a_respacing_that_does_not_fit_the_chain_is_refused_from_the_flags() -> None:
    with pytest.raises(ConversionError, match="no integer stride"):
        describe_model("--image_size 32 --diffusion_steps 10 --timestep_respacing ddim7", "improved-diffusion")
