"""Write the fixtures of tests/test_convert.py with the upstream code itself (not part of the test suite).

    python tests/openai_fixtures/generate.py --improved-diffusion PATH --guided-diffusion PATH

PATH is a checkout of https://github.com/openai/improved-diffusion or https://github.com/openai/guided-diffusion;
their packages are imported from there, none of their code is copied here. For each configuration of `CONFIGS` it
builds the upstream model from the flags with upstream's own argument parser and `create_model_and_diffusion`, gives
it the random weights of `weights.random_state_dict` (every one non-zero, the zero-initialised output layers too;
the tests rebuild the `.pt` checkpoint from the key list and seed in manifest.json), and records in NAME.npz what the
upstream code computes with them:

* `betas`: the diffusion's β_t (float64); `output`: the network output at four timesteps (0, 1, T/2, T-1), one per
  input row `x`, with the class labels `y` of class-conditional models; `embeddings`: the time embedding
  (time_embed of the rescaled sinusoids) of every t.
* `samples` (where `respacing` is given): `p_sample_loop` of the respaced diffusion from noise drawn by a
  `torch.Generator` seeded with `SAMPLE_SEED`, first the start noise, then one draw per step, as
  `DDPMPlusPipeline(generator=...)` draws them; `sample_timesteps`: the kept timesteps, descending.
* `bpd_*` (where `bpd_images` is given): `calc_bpd_loop` on random 8-bit images with the noise that `ddpm-plus bpd
  --seed 0` draws (the keyed noise of ddpm_plus.likelihood: Philox keyed by the image's key and t), clip_denoised
  as upstream's image_nll.py; the terms in columns of timestep t.

readme_checkpoints.json.gz lists every diffusion checkpoint of the two upstream READMEs with its flags and the state
dict shapes of the model upstream builds from them (on the meta device), so that the tests convert the released
architectures key for key. `--readme-only` writes just that file.

A configuration stored in fp16 (`use_fp16`) has the dtypes that `convert_to_fp16` leaves, and its reference outputs
come from the float32 model with the same (fp16-rounded, upcast) weights. `REFUSED` lists an upsampler and a
classifier, key lists only.
"""

import argparse
import gzip
import importlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ddpm_plus.cli_bpd import image_generators

sys.path.insert(0, str(Path(__file__).parents[1]))
from keyed_noise import documented_noise, noise_keys  # noqa: E402

from openai_fixtures.weights import random_state_dict  # noqa: E402

SAMPLE_SEED = 1234
BPD_SEED = 0
HERE = Path(__file__).parent

CONFIGS = {
    # improved-diffusion's CIFAR-10 flags, narrower: cosine schedule, learned σ, any T (rescaled timesteps)
    "improved_cifar_like": {
        "source": "improved-diffusion",
        "flags": "--image_size 32 --num_channels 32 --num_res_blocks 1 --learn_sigma True --dropout 0.3 "
        "--diffusion_steps 100 --noise_schedule cosine --num_heads 2",
        "respacing": "10",
        "bpd_images": 2,
    },
    # class-conditional, no scale-shift norm, σ = β̃ (sigma_small), x_0 prediction, one head at two widths
    "improved_class_cond": {
        "source": "improved-diffusion",
        "flags": "--image_size 32 --num_channels 32 --num_res_blocks 1 --class_cond True "
        "--use_scale_shift_norm False --sigma_small True --predict_xstart True --diffusion_steps 50 "
        "--noise_schedule linear --num_heads 1 --attention_resolutions 32,16",
        "respacing": "5,3",
        "bpd_images": 2,
    },
    # improved-diffusion's LSUN flags, narrower and without learned σ: ε and σ² = β (diffusers' DDPMPipeline samples
    # it too), T = 1000 (rescaling changes nothing), one head at one width
    "improved_lsun_like": {
        "source": "improved-diffusion",
        "flags": "--image_size 32 --num_channels 32 --num_res_blocks 1 --num_heads 1 --use_scale_shift_norm False "
        "--attention_resolutions 16 --diffusion_steps 1000 --noise_schedule linear",
        "respacing": "4",
    },
    # the DPS FFHQ flags, smaller (64x64, 32 channels): resblock_updown, num_head_channels, learned σ, stored in fp16
    "guided_ffhq_like": {
        "source": "guided-diffusion",
        "flags": "--image_size 64 --channel_mult 1,1,2,2,4,4 --attention_resolutions 16 --class_cond False "
        "--diffusion_steps 1000 --learn_sigma True --noise_schedule linear --num_channels 32 "
        "--num_head_channels 16 --num_res_blocks 1 --resblock_updown True --use_fp16 True "
        "--use_scale_shift_norm True",
        "respacing": "ddim8",
    },
    # class-conditional with the new attention order, fixed heads, custom channel_mult, rescaled timesteps, x_0
    # prediction
    "guided_class_cond": {
        "source": "guided-diffusion",
        "flags": "--image_size 16 --channel_mult 1,2 --attention_resolutions 8 --class_cond True "
        "--diffusion_steps 40 --noise_schedule cosine --num_channels 32 --num_heads 2 --num_res_blocks 2 "
        "--use_new_attention_order True --use_scale_shift_norm False --rescale_timesteps True --predict_xstart True",
        "respacing": "6,2",
    },
}
# Checkpoints the converter must refuse: an upsampler and a classifier.
REFUSED = {
    "guided_upsampler": {
        "source": "guided-diffusion",
        "flags": "--large_size 64 --small_size 16 --num_channels 32 --num_res_blocks 1 --attention_resolutions 8",
    },
    "guided_classifier": {
        "source": "guided-diffusion",
        "flags": "--image_size 64 --classifier_width 32 --classifier_depth 1 --classifier_attention_resolutions 8",
    },
}


# Every diffusion checkpoint that the two upstream READMEs list, with the flags printed next to it.
README_CHECKPOINTS = [
    (
        "improved-diffusion",
        "imagenet64_uncond_100M_1500K.pt",
        "--image_size 64 --num_channels 128 --num_res_blocks 3 "
        "--learn_sigma True --diffusion_steps 4000 --noise_schedule cosine",
    ),
    (
        "improved-diffusion",
        "cifar10_uncond_50M_500K.pt",
        "--image_size 32 --num_channels 128 --num_res_blocks 3 "
        "--learn_sigma True --dropout 0.3 --diffusion_steps 4000 --noise_schedule cosine",
    ),
    (
        "improved-diffusion",
        "imagenet64_cond_270M_250K.pt",
        "--image_size 64 --num_channels 192 --num_res_blocks 3 "
        "--learn_sigma True --class_cond True --diffusion_steps 4000 --noise_schedule cosine "
        "--rescale_learned_sigmas False --rescale_timesteps False",
    ),
    (
        "improved-diffusion",
        "upsample_cond_500K.pt",
        "--num_channels 192 --num_res_blocks 2 --learn_sigma True "
        "--class_cond True --diffusion_steps 4000 --noise_schedule linear --rescale_learned_sigmas False "
        "--rescale_timesteps False",
    ),
    (
        "improved-diffusion",
        "lsun_uncond_100M_1200K_bs128.pt",
        "--image_size 256 --num_channels 128 "
        "--num_res_blocks 2 --num_heads 1 --learn_sigma True --use_scale_shift_norm False --attention_resolutions 16 "
        "--diffusion_steps 1000 --noise_schedule linear --rescale_learned_sigmas False --rescale_timesteps False",
    ),
    (
        "improved-diffusion",
        "lsun_uncond_100M_2400K_bs64.pt",
        "--image_size 256 --num_channels 128 "
        "--num_res_blocks 2 --num_heads 1 --learn_sigma True --use_scale_shift_norm False --attention_resolutions 16 "
        "--diffusion_steps 1000 --noise_schedule linear --rescale_learned_sigmas False --rescale_timesteps False "
        "--use_scale_shift_norm False",
    ),
    (
        "improved-diffusion",
        "imagenet64_uncond_vlb_100M_1500K.pt",
        "--image_size 64 --num_channels 128 "
        "--num_res_blocks 3 --learn_sigma True --diffusion_steps 4000 --noise_schedule cosine --use_kl True",
    ),
    (
        "improved-diffusion",
        "cifar10_uncond_vlb_50M_500K.pt",
        "--image_size 32 --num_channels 128 --num_res_blocks 3 "
        "--learn_sigma True --dropout 0.3 --diffusion_steps 4000 --noise_schedule cosine --use_kl True",
    ),
    (
        "guided-diffusion",
        "64x64_diffusion.pt",
        "--attention_resolutions 32,16,8 --class_cond True "
        "--diffusion_steps 1000 --dropout 0.1 --image_size 64 --learn_sigma True --noise_schedule cosine "
        "--num_channels 192 --num_head_channels 64 --num_res_blocks 3 --resblock_updown True "
        "--use_new_attention_order True --use_fp16 True --use_scale_shift_norm True",
    ),
    (
        "guided-diffusion",
        "128x128_diffusion.pt",
        "--attention_resolutions 32,16,8 --class_cond True "
        "--diffusion_steps 1000 --image_size 128 --learn_sigma True --noise_schedule linear --num_channels 256 "
        "--num_heads 4 --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",
    ),
    (
        "guided-diffusion",
        "256x256_diffusion.pt",
        "--attention_resolutions 32,16,8 --class_cond True "
        "--diffusion_steps 1000 --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 "
        "--num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",
    ),
    (
        "guided-diffusion",
        "256x256_diffusion_uncond.pt",
        "--attention_resolutions 32,16,8 --class_cond False "
        "--diffusion_steps 1000 --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 "
        "--num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",
    ),
    (
        "guided-diffusion",
        "512x512_diffusion.pt",
        "--attention_resolutions 32,16,8 --class_cond True "
        "--diffusion_steps 1000 --image_size 512 --learn_sigma True --noise_schedule linear --num_channels 256 "
        "--num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 False "
        "--use_scale_shift_norm True",
    ),
    (
        "guided-diffusion",
        "64_256_upsampler.pt",
        "--attention_resolutions 32,16,8 --class_cond True "
        "--diffusion_steps 1000 --large_size 256  --small_size 64 --learn_sigma True --noise_schedule linear "
        "--num_channels 192 --num_heads 4 --num_res_blocks 2 --resblock_updown True --use_fp16 True "
        "--use_scale_shift_norm True",
    ),
    (
        "guided-diffusion",
        "128_512_upsampler.pt",
        "--attention_resolutions 32,16 --class_cond True "
        "--diffusion_steps 1000 --large_size 512 --small_size 128 --learn_sigma True --noise_schedule linear "
        "--num_channels 192 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True "
        "--use_scale_shift_norm True",
    ),
    (
        "guided-diffusion",
        "lsun_bedroom.pt",
        "--attention_resolutions 32,16,8 --class_cond False "
        "--diffusion_steps 1000 --dropout 0.1 --image_size 256 --learn_sigma True --noise_schedule linear "
        "--num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True "
        "--use_scale_shift_norm True",
    ),
    ("guided-diffusion", "lsun_cat.pt", "(as lsun_bedroom.pt)"),
    ("guided-diffusion", "lsun_horse.pt", "(as lsun_bedroom.pt)"),
    (
        "guided-diffusion",
        "lsun_horse_nodropout.pt",
        "--attention_resolutions 32,16,8 --class_cond False "
        "--diffusion_steps 1000 --dropout 0.0 --image_size 256 --learn_sigma True --noise_schedule linear "
        "--num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True "
        "--use_scale_shift_norm True",
    ),
]


def readme_checkpoints(checkouts: dict) -> list[dict]:
    """Each README checkpoint with the state dict shapes of the diffusion model its flags build (built on the meta
    device: no memory), or None where upstream builds no diffusion model from them (upsamplers, classifiers)."""
    rows = []
    flags_of = {name: flags for _, name, flags in README_CHECKPOINTS}
    for source, name, flags in README_CHECKPOINTS:
        flags = flags_of["lsun_bedroom.pt"] if flags.startswith("(as") else flags
        shapes = None
        if "--large_size" not in flags:
            script_util = upstream(source, checkouts[source])
            args = parse_flags(script_util, script_util.model_and_diffusion_defaults(), flags)
            with torch.device("meta"):
                model = script_util.create_model_and_diffusion(**args)[0]
            shapes = {key: list(value.shape) for key, value in model.state_dict().items()}
            forget_upstream()
        rows.append({"source": source, "checkpoint": name, "flags": flags, "state_dict_shapes": shapes})
    return rows


def upstream(source: str, checkout: Path):
    """The upstream package's script_util, imported from its checkout."""
    sys.path.insert(0, str(checkout))
    return importlib.import_module(source.replace("-", "_") + ".script_util")


def upstream_nn(source: str):
    return importlib.import_module(source.replace("-", "_") + ".nn")


def parse_flags(script_util, defaults: dict, flags: str) -> dict:
    """The flags read by upstream's own parser over `defaults`."""
    parser = argparse.ArgumentParser()
    script_util.add_dict_to_argparser(parser, defaults)
    return script_util.args_to_dict(parser.parse_args(flags.split()), defaults.keys())


def state_dict_shapes(model: torch.nn.Module) -> dict[str, list]:
    """`{key: [shape, dtype]}` of the model's state dict, in its order."""
    return {
        key: [list(value.shape), str(value.dtype).removeprefix("torch.")] for key, value in model.state_dict().items()
    }


def load_random_weights_as(model: torch.nn.Module, shapes: dict[str, list], seed: int) -> None:
    """Give the float32 model the fixture weights of `random_state_dict` for the stored `shapes`, upcast."""
    model.load_state_dict({key: value.float() for key, value in random_state_dict(shapes, seed).items()})


def model_inputs(model, args: dict, num_steps: int, generator: torch.Generator) -> dict:
    """Four inputs at t = 0, 1, T/2, T-1 (one per row), with labels for a class-conditional model."""
    channels = 3
    size = args["image_size"]
    inputs = {
        "x": torch.randn(4, channels, size, size, generator=generator),
        "t": torch.tensor([0, 1, num_steps // 2, num_steps - 1]),
    }
    if model.num_classes is not None:
        inputs["y"] = torch.tensor([3, 999, 0, 517])
    return inputs


def scaled(diffusion, t: torch.Tensor) -> torch.Tensor:
    """The timesteps the network sees, from upstream's own model wrapper (which rescales them to 0..1000 where the
    diffusion says so)."""
    return diffusion._wrap_model(lambda x, timesteps, **kwargs: timesteps)(None, t)


def respaced_samples(script_util, args: dict, model, respacing: str, batch: int) -> dict:
    """p_sample_loop of the respaced diffusion, every draw from one seeded generator (start noise first)."""
    spaced_args = {**args, "timestep_respacing": respacing}
    diffusion = script_util.create_gaussian_diffusion(**_diffusion_kwargs(script_util, spaced_args))
    generator = torch.Generator().manual_seed(SAMPLE_SEED)
    size = args["image_size"]
    start = torch.randn(batch, 3, size, size, generator=generator)
    kwargs = {"y": torch.tensor([7, 42])[:batch]} if model.num_classes is not None else {}
    real_randn_like = torch.randn_like
    torch.randn_like = lambda x: torch.randn(x.shape, generator=generator, dtype=x.dtype)
    try:
        samples = diffusion.p_sample_loop(model, start.shape, noise=start, clip_denoised=True, model_kwargs=kwargs)
    finally:
        torch.randn_like = real_randn_like
    timesteps = sorted(int(t) for t in diffusion.timestep_map)
    return {"samples": samples.numpy(), "timesteps": np.array(timesteps[::-1]), "labels": kwargs.get("y")}


def keyed_noise(keys: list[int], shape: tuple[int, ...], t: int) -> torch.Tensor:
    """ddpm_plus.likelihood's noise of timestep t for each image, as float32."""
    return torch.from_numpy(np.stack([documented_noise(key, t, shape) for key in keys])).float()


def bpd_terms(diffusion, model, num_images: int, size: int, generator: torch.Generator) -> dict:
    """calc_bpd_loop on random 8-bit images with the keyed noise of `ddpm-plus bpd --seed BPD_SEED`."""
    images = torch.randint(0, 256, (num_images, 3, size, size), generator=generator, dtype=torch.uint8)
    x0 = images.float() / 127.5 - 1
    keys = noise_keys(image_generators(BPD_SEED, range(num_images)), num_images)
    labels = torch.tensor([5, 600])[:num_images] if model.num_classes is not None else None
    order = iter(range(diffusion.num_timesteps - 1, -1, -1))  # calc_bpd_loop draws for t = T-1 down to 0
    real_randn_like = torch.randn_like
    torch.randn_like = lambda x: keyed_noise(keys, tuple(x.shape[1:]), next(order))
    try:
        kwargs = {"y": labels} if labels is not None else {}
        out = diffusion.calc_bpd_loop(model, x0, clip_denoised=True, model_kwargs=kwargs)
    finally:
        torch.randn_like = real_randn_like
    result = {
        "images": images.numpy(),
        "vb": out["vb"].flip(1).numpy(),  # column t = timestep t (upstream stacks t = T-1 first)
        "prior_bpd": out["prior_bpd"].numpy(),
        "total_bpd": out["total_bpd"].numpy(),
        "xstart_mse": out["xstart_mse"].flip(1).numpy(),
    }
    if labels is not None:
        result["labels"] = labels.numpy()
    return result


def _diffusion_kwargs(script_util, args: dict) -> dict:
    """create_gaussian_diffusion's arguments from the flags, as create_model_and_diffusion passes them."""
    names = script_util.inspect.signature(script_util.create_gaussian_diffusion).parameters
    return {"steps": args["diffusion_steps"], **{name: args[name] for name in names if name in args}}


def make_config(name: str, config: dict, script_util, out: Path, index: int) -> dict:
    args = parse_flags(script_util, script_util.model_and_diffusion_defaults(), config["flags"])
    # The model computes in float32; a use_fp16 checkpoint is saved as convert_to_fp16 leaves the weights.
    model, diffusion = script_util.create_model_and_diffusion(
        **{**args, "use_fp16": False} if "use_fp16" in args else args
    )
    if args.get("use_fp16"):
        model.convert_to_fp16()  # the dtypes of the stored checkpoint
    shapes = state_dict_shapes(model)
    model.convert_to_fp32()
    load_random_weights_as(model, shapes, seed=index)
    model.eval()
    generator = torch.Generator().manual_seed(index)

    inputs = model_inputs(model, args, diffusion.num_timesteps, generator)
    labels = {"y": inputs["y"]} if "y" in inputs else {}
    all_t = torch.arange(diffusion.num_timesteps)
    with torch.no_grad():
        output = model(inputs["x"], scaled(diffusion, inputs["t"]), **labels)
        sinusoids = upstream_nn(config["source"]).timestep_embedding(scaled(diffusion, all_t), model.model_channels)
        embeddings = model.time_embed(sinusoids)
    arrays = {
        "betas": diffusion.betas,
        "x": inputs["x"].numpy(),
        "t": inputs["t"].numpy(),
        "output": output.numpy(),
        "embeddings": embeddings.numpy(),
    }
    if labels:
        arrays["y"] = inputs["y"].numpy()
    if "respacing" in config:
        with torch.no_grad():
            sampled = respaced_samples(script_util, args, model, config["respacing"], batch=2)
        arrays["samples"] = sampled["samples"]
        arrays["sample_timesteps"] = sampled["timesteps"]
        if sampled["labels"] is not None:
            arrays["sample_labels"] = sampled["labels"].numpy()
    if "bpd_images" in config:
        bpd = bpd_terms(diffusion, model, config["bpd_images"], args["image_size"], generator)
        arrays.update({f"bpd_{key}": value for key, value in bpd.items()})
    np.savez(out / f"{name}.npz", **arrays)
    extra = {key: config[key] for key in ("respacing", "bpd_images") if key in config}
    return {**_entry(config, args, shapes, index), **extra}


def _entry(config: dict, args: dict, shapes: dict, seed: int) -> dict:
    return {
        "source": config["source"],
        "flags": config["flags"],
        "upstream_args": args,
        "seed": seed,
        "state_dict": shapes,
    }


def make_refused(name: str, config: dict, script_util, out: Path, seed: int) -> dict:
    if "--large_size" in config["flags"]:
        args = parse_flags(script_util, script_util.sr_model_and_diffusion_defaults(), config["flags"])
        model = script_util.sr_create_model_and_diffusion(**args)[0]
    else:
        args = parse_flags(script_util, script_util.classifier_and_diffusion_defaults(), config["flags"])
        names = script_util.inspect.signature(script_util.create_classifier).parameters
        model = script_util.create_classifier(**{key: args[key] for key in names})
    return _entry(config, args, state_dict_shapes(model), seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--improved-diffusion", type=Path, required=True, help="checkout of openai/improved-diffusion")
    parser.add_argument("--guided-diffusion", type=Path, required=True, help="checkout of openai/guided-diffusion")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--readme-only", action="store_true", help="write only readme_checkpoints.json.gz")
    args = parser.parse_args()
    checkouts = {"improved-diffusion": args.improved_diffusion, "guided-diffusion": args.guided_diffusion}
    readme = json.dumps(readme_checkpoints(checkouts)).encode()
    (args.out / "readme_checkpoints.json.gz").write_bytes(gzip.compress(readme, mtime=0))  # the same bytes each run
    if args.readme_only:
        return
    manifest = {}
    for index, (name, config) in enumerate({**CONFIGS, **REFUSED}.items()):
        make = make_config if name in CONFIGS else make_refused
        manifest[name] = make(name, config, upstream(config["source"], checkouts[config["source"]]), args.out, index)
        forget_upstream()
    # Key order matters: random_state_dict draws the tensors in the order of the manifest.
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def forget_upstream() -> None:
    """Unload the upstream package, so that the next configuration can import the other source's."""
    for module in [name for name in sys.modules if name.startswith(("improved_diffusion", "guided_diffusion"))]:
        del sys.modules[module]
    sys.path.pop(0)


if __name__ == "__main__":
    main()
