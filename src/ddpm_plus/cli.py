"""The `ddpm-plus` command line: `ddpm-plus sample ...`, `fid ...`, `bpd ...` and `convert ...`.

This module builds the parsers and checks the arguments and every output location with the standard library only,
so `--help` and argument errors answer at once and a run never fails at the end for want of a place to write. The
sub-command's module (`cli_sample`, `cli_fid`, `cli_bpd`, `cli_convert`), which imports torch, is imported only to
run it.
A user error (an invalid value, an unwritable output, a bad model or data set) is one line on stderr and exit code 2.
Each sub-command that writes holds the lock of its output location while it runs (`ddpm_plus.ownership`).
"""

import argparse
import importlib
import importlib.metadata
import importlib.util
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from ddpm_plus.ownership import beside_lock_file, owned

SAMPLE_DESCRIPTION = """\
Generate images with a saved DDPM pipeline: single PNGs, one .npz archive for FID evaluators, a grid, a manifest.

    ddpm-plus sample --model DIR --num-images 16 --steps 1000 --seed 0 --out samples.png
    accelerate launch --multi_gpu --num_processes 8 -m ddpm_plus.cli sample --model google/ddpm-cifar10-32 \\
        --num-images 50000 --batch-size 250 --device cuda --out cifar10/samples.png

writes `samples/000000.png`, `samples/000001.png`, ..., `samples/samples_{N}x{H}x{W}x{C}.npz` (uint8, key arr_0),
`samples/manifest.json` (model, scheduler, steps, seed, versions) and `samples.png`, a grid of the first 64 images.
Image i starts from the noise of a generator seeded with `seed + i`. Images are made in chunks of `--batch-size`
consecutive indices, each chunk by one process, so under `accelerate launch` the images are the same for any number
of processes (bitwise, on one kind of device with the same torch threads per process). Run the same command again
after an interruption: complete images are kept, only the missing ones are made. A folder of images made with other
settings or another --num-images is refused; --overwrite replaces them. A second command into the same --out while
one runs is refused, naming the first.
"""

FID_DESCRIPTION = """\
FID (and Inception Score, KID, precision/recall) of samples against reference images, with torch-fidelity.

    ddpm-plus fid --samples samples/samples_50000x32x32x3.npz --reference cifar10 --reference-split train
    accelerate launch --multi_gpu --num_processes 8 -m ddpm_plus.cli fid --samples samples/ --reference cifar10

--samples and --reference each take an .npz archive of uint8 images (N, H, W, C) under arr_0, an image folder,
'digits', a 🤗 datasets name or path (with --samples-split/--reference-split), or a statistics file (.npz with mu and
sigma, as the cache holds). The reference's statistics are cached in --cache-dir, so a large reference is read
once. --feature-extractor module.path:name puts any torch.nn.Module (uint8 images in, features or (features,
logits) out) in place of the InceptionV3 of TensorFlow's FID. Needs the extra ddpm_plus[eval].
"""

BPD_DESCRIPTION = """\
Bits/dim of a saved DDPM pipeline on a data set, exact or estimated, with a JSON report.

    ddpm-plus bpd --model DIR --data digits --split test --num-timesteps full --output results.json
    ddpm-plus bpd --model DIR --data path/to/images --split train --num-timesteps 100 --plot bound.png

`--num-timesteps full` computes the exact variational bound over all T timesteps (T network evaluations per
image); `--num-timesteps N` spends at most N evaluations per image (the decoder plus 2 draws in each of
⌊(N-1)/2⌋ strata) on the unbiased stratified estimate (`estimate_bound`) of that same exact value, after a small
pilot run that shapes the timestep proposal. Each image draws its noise key from its own generator, seeded from
`--seed` and the image's index, so per-image results do not depend on `--batch-size`, and an estimate uses the
noise of the exact run with the same `--seed`. `--plot FILE.png` draws the bound's terms per timestep and the
rate–distortion curve (ddpm_plus.plots; needs the extra ddpm_plus[plot]).

Under `accelerate launch ... -m ddpm_plus.cli bpd ...` the processes share the images and write the 1-process
report. With `--output FILE`, finished chunks of images wait in FILE.partial/ until the report is written: rerun an
interrupted command to compute only the rest. A report or partial results of other settings at FILE are refused;
--overwrite replaces them.

`--method ode` computes instead the exact likelihood of the probability-flow ODE (ddpm_plus.probability_flow):
each image dequantized `--draws` times (uniform noise within its 8-bit bin, an upper bound on the discrete code
length), the ODE integrated by scipy's adaptive RK45 (`--rtol`, `--atol`) with the divergence from `--num-probes`
Hutchinson probes (`--divergence rademacher|gaussian`) or exact (`--divergence exact`, for small images). It takes
none of the bound's options (`--num-timesteps`, `--pilot-images`, `--pilot-timesteps`, `--clip-denoised`), and the
bound takes none of these. `--batch-size` is then (image, draw) rows per solve.

Images must have an exact 8-bit form: 16-bit, float and transparent images are refused (see ddpm_plus.data).
"""

CONVERT_DESCRIPTION = """\
Convert an openai/improved-diffusion or openai/guided-diffusion checkpoint into a DDPM+ pipeline folder.

    ddpm-plus convert --from improved-diffusion --checkpoint cifar10_uncond_50M_500K.pt --out cifar10-ddpm-plus \\
        --flags "--image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True --dropout 0.3 \\
                 --diffusion_steps 4000 --noise_schedule cosine"

--flags takes the MODEL_FLAGS and DIFFUSION_FLAGS that the upstream README prints next to the checkpoint, read with
that source's defaults. The folder holds a plain diffusers UNet2DModel and a DDPMPlusScheduler in safetensors and a
model card naming the source, the flags and the checkpoint's SHA-256; it loads with DDPMPlusPipeline.from_pretrained
(and plain diffusers). The checkpoint is read with torch.load(weights_only=True): no pickle code runs. A model that
UNet2DModel cannot represent, or a checkpoint that does not fit its flags, is refused in one line before anything is
written (docs/converting.md lists the released checkpoints).
"""

SAMPLES_PER_STRATUM = 2
BPD_METHODS = ("bound", "ode")
DIVERGENCES = ("rademacher", "gaussian", "exact")  # ddpm_plus.probability_flow.DIVERGENCES, without importing torch
# The options of each `ddpm-plus bpd --method` and their defaults (None on the command line means "not given").
BOUND_OPTIONS = {"num_timesteps": "full", "pilot_images": 8, "pilot_timesteps": 32, "clip_denoised": False}
ODE_OPTIONS = {"divergence": "rademacher", "num_probes": 1, "draws": 2, "rtol": 1e-5, "atol": 1e-5}
MIN_EVALUATIONS = 1 + SAMPLES_PER_STRATUM  # the decoder and one KL stratum
SAMPLE_DTYPES = ("float32", "float16", "bfloat16")
FID_METRICS = ("fid", "is", "kid", "pr")
CONVERT_SOURCES = ("improved-diffusion", "guided-diffusion")
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes seeds up to 2**64 - 1


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written, and every option's help ending with its default, unless the help already says what
    the default is (an option whose default is None must say what it means)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shows_default = action.option_strings and action.default not in (None, argparse.SUPPRESS)
        # flags (nargs 0) say what they switch on
        if shows_default and "default" not in text.lower() and action.nargs != 0:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpm-plus", description="DDPM+ tools for diffusers pipelines.", formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {importlib.metadata.version('ddpm_plus')}")
    subcommands = parser.add_subparsers(dest="command", required=True)
    _add_sample_parser(subcommands)
    _add_fid_parser(subcommands)
    _add_bpd_parser(subcommands)
    _add_convert_parser(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ddpm-plus` console script: parse, check (no torch yet), lock the output location, then
    run the sub-command's module; returns its exit status, or 2 with one line on stderr for a user error (a
    `ValueError`, e.g. an output location in use by another run)."""
    args = build_parser().parse_args(argv)
    try:
        check_text_arguments(args, option_name)
        check_finite_arguments(args, option_name)
        args.check(args)
        with output_lock(args):
            return importlib.import_module(args.module).run(args)
    except ValueError as error:
        print(f"ddpm-plus {args.command}: error: {error}", file=sys.stderr)
        return 2


def output_lock(args: argparse.Namespace) -> AbstractContextManager[None]:
    """The lock of the sub-command's output location (a lock file beside it), or none for a command that writes
    nothing."""
    location = args.output_location(args)
    if location is None:
        return nullcontext()
    option, path = location
    return owned(beside_lock_file(path), f"{option} {path}", f"ddpm-plus {args.command}")


def _located(*names: str) -> Callable[[argparse.Namespace], tuple[str, Path] | None]:
    """The output location of a sub-command: the first of the options `names` (attribute names) that is given, with
    its option."""

    def location(args: argparse.Namespace) -> tuple[str, Path] | None:
        for name in names:
            if getattr(args, name) is not None:
                return f"--{name.replace('_', '-')}", getattr(args, name)
        return None

    return location


# --------------------------------------------------------------------------------------------- sub-commands


def _add_sample_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = _add_subcommand(
        subparsers, "sample", "generate images with a saved pipeline (PNG grid + single images)", SAMPLE_DESCRIPTION
    )
    parser.add_argument("--model", required=True, help="saved pipeline directory (or Hub id)")
    parser.add_argument("--num-images", type=_positive_int, default=16, help="number of images (default 16)")
    parser.add_argument("--steps", type=_positive_int, default=None, help="denoising steps (default: all T steps)")
    parser.add_argument("--seed", type=int, default=0, help="image i starts from the noise of seed + i (default 0)")
    parser.add_argument(
        "--stochasticity", type=_unit_interval, default=None, help="reverse-SDE noise η in [0, 1] (default: DDPM step)"
    )
    parser.add_argument(
        "--timestep-respacing",
        default=None,
        help="instead of --steps, improved-/guided-diffusion's respacing, e.g. 250, 10,20,30 or ddim50 (default: none)",
    )
    parser.add_argument(
        "--class-label",
        type=int,
        default=None,
        help="the class of every image (class-conditional models only; default: none)",
    )
    parser.add_argument("--dtype", choices=SAMPLE_DTYPES, default="float32", help="half precision needs a GPU")
    _add_device_arguments(parser)
    parser.add_argument("--batch-size", type=_positive_int, default=16, help="images per network call (default 16)")
    parser.add_argument("--nrow", type=_positive_int, default=None, help="images per grid row (default: square)")
    parser.add_argument("--out", type=_png_path, required=True, help="grid PNG; single images go to a folder beside it")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the images of an earlier run with other settings or another --num-images in --out's folder "
        "(default: refuse)",
    )
    parser.set_defaults(module="ddpm_plus.cli_sample", check=_check_sample_arguments, output_location=_located("out"))


def _check_sample_arguments(args: argparse.Namespace) -> None:
    if args.steps is not None and args.timestep_respacing is not None:
        raise ValueError("give --steps or --timestep-respacing, not both.")
    check_seed(args.seed, args.num_images)
    check_sample_precision(args.dtype, args.device)  # a default device is known once torch is imported (cli_sample)
    check_output_file(args.out, "--out")
    check_output_directory(sample_image_directory(args.out), "--out (its folder of single images)")


def sample_image_directory(grid: Path) -> Path:
    """Where `ddpm-plus sample` writes the single images: a folder beside the grid, named after it."""
    return grid.with_suffix("")


def _add_fid_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = _add_subcommand(
        subparsers, "fid", "FID, IS, KID and precision/recall against reference images", FID_DESCRIPTION
    )
    parser.add_argument("--samples", required=True, help=".npz, image folder, 🤗 dataset or statistics file")
    parser.add_argument("--reference", required=True, help=".npz, image folder, 🤗 dataset or statistics file")
    parser.add_argument("--samples-split", default="train", help="split of a 🤗 dataset --samples (default train)")
    parser.add_argument("--reference-split", default="train", help="split of a 🤗 dataset --reference (default train)")
    parser.add_argument("--feature-extractor", default="inception", help="'inception' or module.path:name")
    parser.add_argument(
        "--feature-extractor-weights", default=None, help="local InceptionV3 weights (default: downloaded once)"
    )
    parser.add_argument(
        "--metrics", type=_metric_list, default=FID_METRICS, help=f"comma-separated, of {','.join(FID_METRICS)} (all)"
    )
    parser.add_argument("--batch-size", type=_positive_int, default=64, help="images per network call (default 64)")
    _add_device_arguments(parser)
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir(), help="reference statistics cache")
    parser.add_argument(
        "--output", type=Path, default=None, help="write the metrics and settings as JSON (default: print only)"
    )
    parser.set_defaults(module="ddpm_plus.cli_fid", check=_check_fid_arguments, output_location=_located("output"))


def _check_fid_arguments(args: argparse.Namespace) -> None:
    check_output_directory(args.cache_dir, "--cache-dir")
    if args.output is not None:
        check_output_file(args.output, "--output")
    check_extra_installed("torch_fidelity", "eval", "ddpm-plus fid")


def default_cache_dir() -> Path:
    """Where `ddpm-plus fid` caches reference statistics: $XDG_CACHE_HOME/ddpm_plus/fid (~/.cache by default)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ddpm_plus" / "fid"


def _add_bpd_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = _add_subcommand(
        subparsers, "bpd", "bits/dim (variational bound) of a saved pipeline on a data set", BPD_DESCRIPTION
    )
    parser.add_argument("--model", required=True, help="saved pipeline directory (or Hub id)")
    parser.add_argument("--data", default="digits", help="'digits', an image folder, or a 🤗 datasets name/path")
    parser.add_argument("--split", default="test", help="data split (image folders: 'train' is all images)")
    parser.add_argument(
        "--method", choices=BPD_METHODS, default="bound", help="the variational bound, or the probability-flow ODE"
    )
    parser.add_argument("--num-timesteps", type=_num_timesteps, help="'full' (default) or evaluations/image")
    parser.add_argument(
        "--batch-size", type=int, default=256, help="(image, timestep) pairs, or (image, draw) rows, per network call"
    )
    parser.add_argument("--max-images", type=int, default=None, help="use only the first N images (default: all)")
    parser.add_argument("--pilot-images", type=int, help="images of the estimator's pilot run (default 8)")
    parser.add_argument("--pilot-timesteps", type=int, help="timesteps of the estimator's pilot run (default 32)")
    parser.add_argument(
        "--clip-denoised", action="store_true", default=None, help="clip x̂_0 to [-1, 1] in the reverse mean"
    )
    parser.add_argument(
        "--divergence", choices=DIVERGENCES, help="ODE: Hutchinson probes or exact (default: rademacher)"
    )
    parser.add_argument("--num-probes", type=int, help="ODE: Hutchinson probes per draw (default 1)")
    parser.add_argument("--draws", type=int, help="ODE: dequantization draws per image (default 2)")
    parser.add_argument("--rtol", type=float, help="ODE: the solver's relative tolerance (default 1e-5)")
    parser.add_argument("--atol", type=float, help="ODE: the solver's absolute tolerance (default 1e-5)")
    _add_device_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the images' noise keys")
    parser.add_argument(
        "--output", type=Path, default=None, help="write per-image results and settings as JSON (default: print only)"
    )
    parser.add_argument(
        "--plot",
        type=_png_path,
        default=None,
        help="write the figure of the terms and the rate-distortion curve (PNG; default: none)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a report or partial results of other settings at --output (default: refuse)",
    )
    parser.set_defaults(
        module="ddpm_plus.cli_bpd", check=_check_bpd_arguments, output_location=_located("output", "plot")
    )


def _check_bpd_arguments(args: argparse.Namespace) -> None:
    _resolve_method_options(args)
    for name in ("batch_size", "pilot_images", "pilot_timesteps", "num_probes", "draws"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    for name in ("rtol", "atol"):
        if args.method == "ode" and not getattr(args, name) > 0:
            raise ValueError(f"--{name} (a tolerance of the ODE solver) must be positive, got {getattr(args, name)}.")
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images must be positive, got {args.max_images}.")
    check_seed(args.seed)
    if args.output is not None:
        check_output_file(args.output, "--output")
    if args.plot is not None:
        check_extra_installed("matplotlib", "plot", "--plot")
        check_output_file(args.plot, "--plot")


def _add_convert_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = _add_subcommand(
        subparsers, "convert", "convert an improved-/guided-diffusion checkpoint to a pipeline", CONVERT_DESCRIPTION
    )
    parser.add_argument(
        "--from", dest="source", required=True, choices=CONVERT_SOURCES, help="the code base the checkpoint is from"
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="the .pt state dict")
    parser.add_argument(
        "--flags", required=True, help='the upstream model and diffusion flags, e.g. "--image_size 32 ..."'
    )
    parser.add_argument("--out", type=Path, required=True, help="the pipeline folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out folder")
    parser.set_defaults(module="ddpm_plus.cli_convert", check=_check_convert_arguments, output_location=_located("out"))


def _check_convert_arguments(args: argparse.Namespace) -> None:
    if not args.checkpoint.is_file():
        raise ValueError(f"--checkpoint {args.checkpoint} is not a file.")
    check_output_directory(args.out, "--out")
    if args.out.is_dir() and any(args.out.iterdir()) and not args.overwrite:
        raise ValueError(f"--out {args.out} is not empty; pass --overwrite to replace what it holds.")


def check_seed(seed: int, seeds_used: int = 1, option: str = "--seed") -> None:
    """Raise a `ValueError` naming `option` unless `seed` and the next `seeds_used - 1` seeds (image i takes
    seed + i) are seeds of torch and numpy: 0..2**64 - 1."""
    if not 0 <= seed <= MAX_SEED - (seeds_used - 1):
        counted = f" (it seeds {seeds_used} images, seed + i for image i)" if seeds_used > 1 else ""
        raise ValueError(f"{option} must lie in 0..{MAX_SEED - (seeds_used - 1)}{counted}, got {seed}.")


def check_sample_precision(dtype: str, device: str | None) -> None:
    """Refuse half-precision sampling on the CPU (`device` None: not known yet, checked again once resolved)."""
    if dtype != "float32" and device == "cpu":
        raise ValueError(f"--dtype {dtype} needs a GPU (--device cuda); sample in float32 on CPUs.")


def _add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """--device and --num-threads, which mean the same in every sub-command (and --num_threads in training)."""
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument(
        "--num-threads",
        type=thread_count,
        default=None,
        help="torch threads per process (default: the CPU cores divided among this machine's processes)",
    )


def _resolve_method_options(args: argparse.Namespace) -> None:
    """Refuse the options of the other `--method`; give this method's options that were not given their defaults."""
    own, other = (ODE_OPTIONS, BOUND_OPTIONS) if args.method == "ode" else (BOUND_OPTIONS, ODE_OPTIONS)
    given = [f"--{name.replace('_', '-')}" for name in other if getattr(args, name) is not None]
    if given:
        whose = "the variational bound and its estimator" if args.method == "ode" else "--method ode"
        raise ValueError(f"--method {args.method} takes no {', '.join(given)} (options of {whose}).")
    for name, default in own.items():
        if getattr(args, name) is None:
            setattr(args, name, default)


def method_settings(args: argparse.Namespace) -> dict:
    """The arguments of a `ddpm-plus bpd` run without the other method's options (which it did not take)."""
    other = BOUND_OPTIONS if args.method == "ode" else ODE_OPTIONS
    return {key: value for key, value in vars(args).items() if key not in other}


def _add_subcommand(
    subparsers: argparse._SubParsersAction, name: str, summary: str, description: str
) -> argparse.ArgumentParser:
    return subparsers.add_parser(name, help=summary, description=description, formatter_class=HelpFormatter)


# --------------------------------------------------------------------------------------------- argument types


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def thread_count(text: str) -> int:
    """A number of torch threads per process: positive, and no more than the machine's CPU cores (more only
    oversubscribe them; thousands take minutes to start)."""
    value = _positive_int(text)
    cores = os.cpu_count()
    if cores is not None and value > cores:
        raise argparse.ArgumentTypeError(f"{value} exceeds the {cores} CPU cores of this machine")
    return value


def _unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def _metric_list(text: str) -> tuple[str, ...]:
    metrics = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = sorted(set(metrics) - set(FID_METRICS))
    if unknown or not metrics:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(FID_METRICS)}, got {text!r}")
    return metrics


def _png_path(text: str) -> Path:
    path = Path(text)
    if path.suffix.lower() != ".png":
        folder = ", a directory" if path.is_dir() else ""
        raise argparse.ArgumentTypeError(f"must be a .png file, got {text}{folder}")
    return path


def _num_timesteps(value: str) -> int | str:
    if value == "full":
        return value
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'full' or an integer, got {value!r}") from None
    if number < MIN_EVALUATIONS:
        raise argparse.ArgumentTypeError(f"the estimator needs at least {MIN_EVALUATIONS} evaluations per image")
    return number


# --------------------------------------------------------------------------------------------- extras and outputs


def check_extra_installed(module: str, extra: str, what: str) -> None:
    """Raise a `ValueError` naming the `ddpm_plus[extra]` install unless `module` can be imported (looked up, not
    imported), so that `what` fails at once rather than after the work."""
    if importlib.util.find_spec(module) is None:
        raise ValueError(f"{what} needs {module}, an optional dependency: pip install 'ddpm_plus[{extra}]'")


def option_name(dest: str) -> str:
    """The flag of an argument's destination: `num_images` → `--num-images`."""
    return f"--{dest.replace('_', '-')}"


def check_text_arguments(args: argparse.Namespace, option: Callable[[str], str]) -> None:
    """Raise a `ValueError` for a text or path argument that logs, manifests, model cards and figure titles could
    not carry as given: bytes that are not UTF-8 (a file name from another system), or a control character such as
    a line break. `option(dest)` names the flag."""
    for name, value in vars(args).items():
        if not isinstance(value, (str, Path)):
            continue
        text = str(value)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"{option(name)} {os.fsencode(text)!r} is not UTF-8 text; rename it (or use a link with a UTF-8 name)."
            ) from None
        if any(ord(character) < 32 or ord(character) == 127 for character in text):
            raise ValueError(f"{option(name)} {text!r} contains a control character (e.g. a line break).")


def check_finite_arguments(args: argparse.Namespace, option: Callable[[str], str]) -> None:
    """Raise a `ValueError` for a number argument that is nan or infinite (argparse's `float` accepts "nan" and
    "inf", and a range check such as `value < 0` lets nan through)."""
    for name, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{option(name)} must be a finite number, got {value}.")


def check_output_file(path: Path, option: str) -> None:
    """Raise a `ValueError` naming `option` unless a file can be written at `path`: not an existing directory, not
    an existing read-only file, in a directory that exists and is writable or can be created."""
    if path.is_dir():
        raise ValueError(f"{option} {path} is a directory; give the path of a file.")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{option} {path} exists and is not writable.")
    _check_creatable_directory(path.parent, f"{option} {path}")


def check_output_directory(path: Path, option: str) -> None:
    """Raise a `ValueError` naming `option` unless `path` is a writable directory or one that can be created."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} exists and is not a directory.")
    _check_creatable_directory(path, f"{option} {path}")


def _check_creatable_directory(directory: Path, what: str) -> None:
    """Raise a `ValueError` unless `directory`, or its nearest existing ancestor (from which the rest can be
    created), is a directory where a file can be created. Creates nothing but a probe file, removed at once."""
    existing = directory
    while not os.path.exists(existing):  # False, not an error, for a path below a file or an unreadable folder
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"cannot write {what}: {existing} is not a directory.")
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".ddpm-plus-write-check-")
    except OSError as error:
        raise ValueError(f"cannot write {what}: {existing} is not writable ({error.strerror}).") from None
    os.close(handle)
    os.unlink(probe)


if __name__ == "__main__":
    raise SystemExit(main())
