"""A broad fault probe: bad and unusual input to every command and to the Python API, run as a user runs it, each
outcome sorted into one class. No diffusers baseline; it reports counts.

    python bench/fault_probe.py [--jobs 2] [--timeout 180] [--only sample] [--details results.json]

Each case runs in a subprocess (CPU, one torch thread) in its own folder, which holds an earlier output that no
case may change. The classes:

* clear error: exit code 2 (a raised exception for the Python API) and one line naming what is wrong (the case's
  expected words), before any work (no progress bar, no new output);
* handled: the input was valid, and the result is right (the case's own check);
* unclear: a traceback, several lines, or a message that does not name the problem;
* silent: bad input accepted without a word, or a wrong result;
* late: refused, but after work had started (a training step, a progress bar, files written);
* data loss: an earlier output changed or vanished;
* hang: the timeout passed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ddpm_plus.ownership import is_left_lock_file

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "train_scripts" / "train.py")
TINY_UNET = str(REPO / "tests" / "helpers" / "tiny_unet.json")
# The rates of the progress bars of work: training steps, images, likelihood calls (not diffusers' loading bar).
WORK_MARKERS = ("step/s", "s/step", "img/s", "s/img", "call/s", "s/call")
EARLIER = "earlier.json"


@dataclass
class Case:
    name: str
    command: list[str]  # "{work}" is the case's folder, "{model}" a saved tiny pipeline
    expect: str = "refuse"  # or "handle"
    words: tuple[str, ...] = ()  # a refusal must contain each (case-insensitive)
    check: Callable[[Path, subprocess.CompletedProcess], bool] | None = None
    setup: Callable[[Path], None] | None = None
    changes: tuple[str, ...] = field(default=())  # files below {work} that the case may change


# --------------------------------------------------------------------------------------------- the cases

TRAIN_INTS = {
    # option: values that are invalid
    "train_batch_size": ("0", "-1", "abc", "1.5"),
    "gradient_accumulation_steps": ("0", "-2"),
    "logging_steps": ("0",),
    "num_grid_images": ("0", "-3"),
    "eval_batch_size": ("0",),
    "bpd_strata": ("0", "-1"),
    "bpd_samples_per_stratum": ("1", "0"),
    "max_train_steps": ("0", "-1", "ten"),
    "num_epochs": ("0", "-1"),
    "resolution": ("0", "-16", "17", "1048576"),
    "num_eval_images": ("0",),
    "num_inference_steps": ("0", "5000"),
    "num_train_timesteps": ("0", "1", "-5"),
    "checkpoints_total_limit": ("0",),
    "num_threads": ("0", "100000"),
    "save_images_steps": ("-1",),
    "bpd_steps": ("-1",),
    "eval_fid_every": ("-1",),
    "checkpointing_steps": ("-1",),
    "lr_warmup_steps": ("-1",),
    "seed": ("-1", "18446744073709551616", "x"),
    "dataloader_num_workers": ("-1",),
    "skip_nonfinite_steps": ("-1",),
}
TRAIN_FLOATS = {
    "learning_rate": ("0", "-1", "nan", "inf"),
    "adam_beta1": ("1", "-0.1", "nan"),
    "adam_beta2": ("1.5", "nan"),
    "adam_weight_decay": ("-1", "nan"),
    "adam_epsilon": ("0", "-1e-8", "inf"),
    "max_grad_norm": ("-1", "nan"),
    "ema_max_decay": ("1.5", "-0.5", "nan"),
    "ema_inv_gamma": ("0", "-1", "nan"),
    "ema_power": ("0", "-1", "inf"),
    "snr_gamma": ("0", "-5", "nan"),
    "vlb_weight": ("-1", "nan"),
    "beta_start": ("-0.1", "nan", "2"),
    "beta_end": ("1.5", "nan", "-1"),
    "held_out_fraction": ("1", "-0.1", "nan"),
}
# Options that only act with others (train.py refuses them alone); the cases give those.
NEEDS = {
    "vlb_weight": ["--learn_sigma", "--loss", "hybrid"],
    "held_out_fraction": ["--train_data_dir", "{work}/images"],
}


def training_cases() -> list[Case]:
    cases = []
    for option, values in {**TRAIN_INTS, **TRAIN_FLOATS}.items():
        for value in values:
            setup = make_image_folder if option in NEEDS and "train_data_dir" in NEEDS[option] else None
            cases.append(
                Case(
                    f"train --{option} {value}",
                    [sys.executable, TRAIN, "--output_dir", "{work}/run", "--model_config", TINY_UNET,
                     *NEEDS.get(option, []), f"--{option}", value],
                    words=(option,),
                    setup=setup,
                )
            )  # fmt: skip
    more = [
        ("train --dataset_name missing/path", ["--dataset_name", "{work}/no/such/folder"], ("no/such/folder",)),
        ("train --train_data_dir missing", ["--train_data_dir", "{work}/none"], ("none",)),
        ("train --train_data_dir a file", ["--train_data_dir", "{work}/" + EARLIER], (EARLIER,)),
        ("train --model_config unknown", ["--model_config", "ddpm-cifar11"], ("ddpm-cifar11",)),
        ("train --model_config corrupt json", ["--model_config", "{work}/" + EARLIER], (EARLIER,)),
        ("train --output_dir is a file", ["--output_dir", "{work}/" + EARLIER], (EARLIER,)),
        ("train --resume_from_checkpoint missing", ["--resume_from_checkpoint", "{work}/nope"], ("nope",)),
        ("train --report_to bogus", ["--report_to", "bogus"], ("bogus",)),
        ("train --mixed_precision fp16 on cpu", ["--mixed_precision", "fp16"], ("gpu",)),
        ("train --lr_scheduler bogus", ["--lr_scheduler", "bogus"], ("bogus",)),
        ("train --prediction_type x0", ["--prediction_type", "x0"], ("x0",)),
        ("train --loss hybrid without learn_sigma", ["--loss", "hybrid"], ("learn_sigma",)),
        ("train --pretrained missing", ["--pretrained_model_name_or_path", "{work}/none"], ("none",)),
        ("train --beta_start with cosine", ["--beta_schedule", "squaredcos_cap_v2", "--beta_start", "0.001"],
         ("beta_start",)),
        ("train --image_column with digits", ["--image_column", "img"], ("image_column",)),
        ("train --hub_private_repo without push", ["--hub_private_repo"], ("hub_private_repo",)),
        ("train --push_to_hub without token", ["--push_to_hub"], ("token",)),
        ("train --eval_split bogus", ["--eval_split", "validation"], ("validation",)),
    ]  # fmt: skip
    for name, arguments, words in more:
        command = [sys.executable, TRAIN, "--output_dir", "{work}/run", "--model_config", TINY_UNET, *arguments]
        if "--output_dir" in arguments:
            command = [sys.executable, TRAIN, "--model_config", TINY_UNET, *arguments]
        cases.append(Case(name, command, words=words))
    return cases


def cli(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "ddpm_plus.cli", *arguments]


def sample_cases() -> list[Case]:
    out = "{work}/s/grid.png"
    bad = [
        ("--model missing", ["--model", "{work}/none", "--out", out], ("none",)),
        ("--model a file", ["--model", "{work}/" + EARLIER, "--out", out], (EARLIER,)),
        ("--model folder without model_index", ["--model", "{work}", "--out", out], ("model_index.json",)),
        ("--model corrupt model_index", ["--model", "{work}/corrupt", "--out", out], ("model_index.json",)),
        ("--num-images 0", ["--model", "{model}", "--num-images", "0", "--out", out], ("num-images",)),
        ("--num-images -5", ["--model", "{model}", "--num-images", "-5", "--out", out], ("num-images",)),
        ("--num-images 10^12", ["--model", "{model}", "--num-images", "1000000000000", "--out", out], ("disk",)),
        ("--steps 0", ["--model", "{model}", "--steps", "0", "--out", out], ("steps",)),
        ("--steps 50 > T", ["--model", "{model}", "--steps", "50", "--out", out], ("50",)),
        ("--seed -1", ["--model", "{model}", "--seed", "-1", "--out", out], ("seed",)),
        ("--seed 2^64", ["--model", "{model}", "--seed", "18446744073709551616", "--out", out], ("seed",)),
        ("--batch-size 0", ["--model", "{model}", "--batch-size", "0", "--out", out], ("batch-size",)),
        ("--out is a folder", ["--model", "{model}", "--out", "{work}"], ("directory",)),
        ("--out below a file", ["--model", "{model}", "--out", "{work}/" + EARLIER + "/g.png"], (EARLIER,)),
        ("--stochasticity 2", ["--model", "{model}", "--stochasticity", "2", "--out", out], ("stochasticity",)),
        ("--stochasticity nan", ["--model", "{model}", "--stochasticity", "nan", "--out", out], ("stochasticity",)),
        ("--timestep-respacing abc", ["--model", "{model}", "--timestep-respacing", "abc", "--out", out],
         ("respacing",)),
        ("--timestep-respacing 0", ["--model", "{model}", "--timestep-respacing", "0", "--out", out], ("respacing",)),
        ("--timestep-respacing 500", ["--model", "{model}", "--timestep-respacing", "500", "--out", out], ("500",)),
        ("--class-label on an unconditional model", ["--model", "{model}", "--class-label", "3", "--out", out],
         ("class",)),
        ("--dtype float16 on cpu", ["--model", "{model}", "--dtype", "float16", "--device", "cpu", "--out", out],
         ("float16",)),
        ("--device cuda without one", ["--model", "{model}", "--device", "cuda", "--out", out], ("cuda",)),
        ("--device nonsense", ["--model", "{model}", "--device", "gpu0", "--out", out], ("gpu0",)),
        ("--num-threads 100000", ["--model", "{model}", "--num-threads", "100000", "--out", out], ("threads",)),
        ("--nrow 0", ["--model", "{model}", "--nrow", "0", "--out", out], ("nrow",)),
        ("--out not UTF-8", ["--model", "{model}", "--out", "{work}/\udcff.png"], ("utf-8",)),
    ]  # fmt: skip
    cases = [
        Case(f"sample {name}", cli("sample", *arguments), words=words, setup=make_corrupt_model)
        for name, arguments, words in bad
    ]
    cases.append(Case("sample runs", cli("sample", "--model", "{model}", "--num-images", "3", "--out", out),
                      expect="handle", check=lambda work, _: archive_images(work / "s" / "grid") == 3))  # fmt: skip
    cases.append(Case("sample rerun with another seed", cli("sample", "--model", "{model}", "--num-images", "3",
                      "--seed", "7", "--out", "{work}/earlier-samples/grid.png"), words=("seed",),
                      setup=make_earlier_samples))  # fmt: skip
    cases.append(Case("sample rerun with another count", cli("sample", "--model", "{model}", "--num-images", "5",
                      "--out", "{work}/earlier-samples/grid.png"), words=("num_images",),
                      setup=make_earlier_samples))  # fmt: skip
    cases.append(Case("sample rerun, nothing to do", cli("sample", "--model", "{model}", "--num-images", "3",
                      "--out", "{work}/earlier-samples/grid.png"), expect="handle", setup=make_earlier_samples,
                      check=lambda _, result: "Nothing to sample" in result.stdout,
                      changes=("earlier-samples/grid.png", "earlier-samples/grid/samples_3x8x8x3.npz",
                               "earlier-samples/grid/manifest.json")))  # fmt: skip
    return cases


def bpd_cases() -> list[Case]:
    common = ["--model", "{model}", "--max-images", "2"]
    bad = [
        ("--data missing", ["--data", "{work}/none"], ("none",)),
        ("--data a file", ["--data", "{work}/" + EARLIER], (EARLIER,)),
        ("--split bogus", ["--split", "validation"], ("validation",)),
        ("--max-images 0", ["--max-images", "0"], ("max-images",)),
        ("--batch-size 0", ["--batch-size", "0"], ("batch-size",)),
        ("--batch-size 10^12", ["--batch-size", "1000000000000"], ("memory",)),
        ("--num-timesteps 0", ["--num-timesteps", "0"], ("num-timesteps",)),
        ("--num-timesteps abc", ["--num-timesteps", "abc"], ("num-timesteps",)),
        ("--pilot-images 0", ["--num-timesteps", "8", "--pilot-images", "0"], ("pilot-images",)),
        ("--draws 0", ["--method", "ode", "--draws", "0"], ("draws",)),
        ("--rtol 0", ["--method", "ode", "--rtol", "0"], ("rtol",)),
        ("--rtol with the bound", ["--rtol", "1e-3"], ("rtol",)),
        ("--output is a folder", ["--output", "{work}"], ("directory",)),
        ("--plot below a file", ["--plot", "{work}/" + EARLIER + "/b.png"], (EARLIER,)),
        ("--seed -3", ["--seed", "-3"], ("seed",)),
        ("--device cuda:3", ["--device", "cuda:3"], ("cuda",)),
        ("--model missing", ["--model", "{work}/none"], ("none",)),
        ("--output an earlier non-report", ["--output", "{work}/" + EARLIER], (EARLIER,)),
    ]  # fmt: skip
    cases = [Case(f"bpd {name}", cli("bpd", *common, *arguments), words=words) for name, arguments, words in bad]
    cases.append(
        Case(
            "bpd runs",
            cli("bpd", *common, "--output", "{work}/b/report.json"),
            expect="handle",
            check=lambda work, _: json.loads((work / "b" / "report.json").read_text())["summary"]["num_images"] == 2,
        )
    )
    return cases  # fmt: skip


def fid_and_convert_cases() -> list[Case]:
    return [
        Case("fid --samples missing", cli("fid", "--samples", "{work}/none.npz", "--reference", "digits"),
             words=("none.npz",)),
        Case("fid --metrics bogus", cli("fid", "--samples", "{work}/a.npz", "--reference", "digits", "--metrics",
             "fid,bogus"), words=("bogus",)),
        Case("fid --output a folder", cli("fid", "--samples", "{work}/a.npz", "--reference", "digits", "--output",
             "{work}"), words=("directory",)),
        Case("convert --checkpoint missing", cli("convert", "--from", "improved-diffusion", "--checkpoint",
             "{work}/none.pt", "--flags", "--image_size 32", "--out", "{work}/c"), words=("none.pt",)),
        Case("convert --checkpoint not a checkpoint", cli("convert", "--from", "improved-diffusion", "--checkpoint",
             "{work}/" + EARLIER, "--flags", "--image_size 32", "--out", "{work}/c"), words=(EARLIER,)),
        Case("convert --flags unparsable", cli("convert", "--from", "improved-diffusion", "--checkpoint",
             "{work}/" + EARLIER, "--flags", "--image_size thirty", "--out", "{work}/c"), words=("image_size",)),
        Case("convert --from unknown", cli("convert", "--from", "k-diffusion", "--checkpoint", "{work}/x.pt",
             "--flags", "", "--out", "{work}/c"), words=("k-diffusion",)),
        Case("convert --out non-empty", cli("convert", "--from", "improved-diffusion", "--checkpoint",
             "{work}/" + EARLIER, "--flags", "--image_size 32", "--out", "{work}"), words=("overwrite",)),
    ]  # fmt: skip


API = """
import sys, torch
from ddpm_plus import DDPMPlusPipeline, DDPMPlusScheduler
s = DDPMPlusScheduler(num_train_timesteps=20)
x = torch.randn(2, 3, 8, 8)
"""


def api_cases() -> list[Case]:
    statements = {
        "from_pretrained missing": ("DDPMPlusPipeline.from_pretrained(sys.argv[1] + '/none')", ("none",)),
        "from_pretrained a file": ("DDPMPlusPipeline.from_pretrained(sys.argv[1] + '/earlier.json')", ("earlier",)),
        "step at t = T": ("s.step(x, 20, x)", ("20",)),
        "step at t = -1": ("s.step(x, -1, x)", ("-1",)),
        "step output of another batch": ("s.step(x[:1], 5, x)", ("shape",)),
        "step output of another size": ("s.step(x[..., :4, :4], 5, x)", ("shape",)),
        "step integer sample": ("s.step(x, 5, x.long())", ("float",)),
        "step wrong generator list": ("s.step(x, 5, x, generator=[torch.Generator()] * 3)", ("generator",)),
        "add_noise t = T": ("s.add_noise(x, x, torch.tensor([20, 1]))", ("20",)),
        "add_noise timesteps of another batch": ("s.add_noise(x, x, torch.tensor([1, 2, 3, 4]))", ("timesteps",)),
        "add_noise integer noise": ("s.add_noise(x, x.long(), torch.tensor([1, 2]))", ("float",)),
        "scheduler clip_sample_range 0": ("DDPMPlusScheduler(clip_sample_range=0.0)", ("clip_sample_range",)),
        "scheduler beta_end 2": ("DDPMPlusScheduler(beta_end=2.0)", ("beta_end",)),
        "set_timesteps 0": ("s.set_timesteps(0)", ("num_inference_steps",)),
        "set_timesteps beyond T": ("s.set_timesteps(50)", ("50",)),
    }
    return [
        Case(f"api {name}", [sys.executable, "-c", API + statement, "{work}"], words=words)
        for name, (statement, words) in statements.items()
    ]


# --------------------------------------------------------------------------------------------- fixtures


def make_image_folder(work: Path) -> None:
    from PIL import Image

    (work / "images").mkdir()
    for index in range(6):
        Image.new("L", (16, 16), color=index * 40).save(work / "images" / f"{index}.png")


def make_corrupt_model(work: Path) -> None:
    (work / "corrupt").mkdir()
    (work / "corrupt" / "model_index.json").write_text("{ not json")


def make_earlier_samples(work: Path) -> None:
    result = subprocess.run(
        cli("sample", "--model", str(MODEL), "--num-images", "3", "--out", str(work / "earlier-samples" / "grid.png")),
        capture_output=True, text=True, env=environment(), timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def archive_images(directory: Path) -> int:
    import numpy as np

    archives = list(directory.glob("*.npz"))
    if len(archives) != 1:
        return -len(archives)  # none, or stale ones beside the new
    with np.load(archives[0]) as data:
        return len(data["arr_0"])


MODEL = Path()


def make_model(directory: Path) -> Path:
    import torch
    from diffusers import UNet2DModel

    from ddpm_plus import DDPMPlusPipeline, DDPMPlusScheduler

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(4, 8), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)  # fmt: skip
    path = directory / "model"
    DDPMPlusPipeline(unet=unet, scheduler=DDPMPlusScheduler(num_train_timesteps=20)).save_pretrained(path)
    return path


# --------------------------------------------------------------------------------------------- running


def environment() -> dict[str, str]:
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def hashes(root: Path) -> dict[str, str]:
    """SHA-256 of every file below `root`; the empty lock file that a command leaves at its output location (run
    ownership) is no output."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not is_left_lock_file(path)
    }


def classify(case: Case, work: Path, result: subprocess.CompletedProcess | None, before: dict[str, str]) -> str:
    if result is None:
        return "hang"
    after = hashes(work)
    changed = [name for name, digest in before.items() if after.get(name) != digest and name not in case.changes]
    if changed:
        return "data loss"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    traceback = any(line.startswith("Traceback") for line in lines)
    if case.expect == "handle" and result.returncode == 0:
        return "handled" if case.check is None or passes(case.check, work, result) else "silent"
    if result.returncode == 0:
        return "silent"
    worked = any(marker in result.stderr for marker in WORK_MARKERS) or set(after) - set(before)
    is_api = case.command[1] == "-c"
    message = lines[-1] if lines else ""
    named = all(word.lower() in message.lower() for word in case.words)
    if is_api:  # an exception: its last line names it
        return "clear error" if named and not worked else ("late" if worked else "unclear")
    one_line = [line for line in lines if ": error: " in line] == lines[-1:]
    if traceback or not one_line or not named:
        return "unclear"
    return "late" if worked else "clear error"


def passes(check: Callable[[Path, subprocess.CompletedProcess], bool], work: Path, result) -> bool:
    """Whether the case's own check holds; outputs it cannot read do not hold it."""
    try:
        return check(work, result)
    except (OSError, ValueError, KeyError):
        return False


def run_case(case: Case, root: Path, timeout: float) -> tuple[str, str, str]:
    work = Path(tempfile.mkdtemp(dir=root))
    (work / EARLIER).write_text('{"bits_per_dim": 2.6}')
    if case.setup is not None:
        case.setup(work)
    before = hashes(work)
    command = [part.replace("{work}", str(work)).replace("{model}", str(MODEL)) for part in case.command]
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=environment(), timeout=timeout, cwd=work)
    except subprocess.TimeoutExpired:
        result = None
    outcome = classify(case, work, result, before)
    last = "" if result is None else (result.stderr.strip().splitlines() or [""])[-1][:300]
    return case.name, outcome, last


def main() -> None:
    global MODEL
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=180)
    parser.add_argument("--only", default=None, help="run the cases whose name contains this")
    parser.add_argument("--details", type=Path, default=None, help="write every case's outcome and message here")
    args = parser.parse_args()
    cases = training_cases() + sample_cases() + bpd_cases() + fid_and_convert_cases() + api_cases()
    if args.only:
        cases = [case for case in cases if args.only in case.name]
    root = Path(tempfile.mkdtemp(prefix="ddpm-plus-probe-"))
    MODEL = make_model(root)
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        outcomes = list(pool.map(lambda case: run_case(case, root, args.timeout), cases))
    counts = Counter(outcome for _, outcome, _ in outcomes)
    for name, outcome, last in outcomes:
        if outcome not in ("clear error", "handled"):
            print(f"{outcome:12} {name}: {last}")
    print(f"\n{len(outcomes)} cases in {time.perf_counter() - started:.0f} s:")
    for outcome in ("clear error", "handled", "unclear", "silent", "late", "data loss", "hang"):
        print(f"  {outcome:12} {counts.get(outcome, 0)}")
    if args.details is not None:
        args.details.write_text(
            json.dumps([dict(zip(("case", "outcome", "message"), row, strict=True)) for row in outcomes], indent=1)
        )


if __name__ == "__main__":
    main()
