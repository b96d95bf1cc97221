"""Tests of the training script `train_scripts/train.py` and of the library behind it, `ddpm_plus.training`.

Short CPU runs of the tests' tiny UNet with a short chain (T = 20): the script's entry point runs in the test's process
where possible (faults injected with `monkeypatch`), and as a subprocess for `accelerate launch` with two processes and
for SIGKILL + resume (through `tests/helpers/train_with_faults.py`).
"""

import ast
import errno
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from diffusers import UNet2DModel
from helpers import TINY_UNET_CONFIG
from helpers.train_with_faults import TRAIN_SCRIPT, nan_images_at, run_train_script
from PIL import Image
from safetensors.torch import load_file, save_file

from ddpm_plus.models import unet_config
from ddpm_plus.scheduling_ddpm_plus import DDPMPlusScheduler
from ddpm_plus.timestep_samplers import LossSecondMomentResampler, UniformSampler
from ddpm_plus.training import (
    DiffusionObjective,
    ShardedBatchSampler,
    Trainer,
    TrainingGenerators,
    build_optimizer,
    check_world_size,
    complete_checkpoints,
    disk_is_full,
    latest_checkpoint,
    loss_scaler_difference,
    parse_args,
    prune_checkpoints,
    remove_unfinished_checkpoints,
    resolve_resume_checkpoint,
    torch_threads_per_process,
    verify_checkpoint,
)
from ddpm_plus.training.checkpoints import save_ema_weights
from ddpm_plus.training.errors import CheckpointError

REPO = Path(__file__).resolve().parents[1]
FAULTS_LAUNCHER = REPO / "tests" / "helpers" / "train_with_faults.py"
T = 20
FAST = [
    "--model_config", str(TINY_UNET_CONFIG), "--num_train_timesteps", str(T), "--train_batch_size", "8",
    "--num_grid_images", "4", "--num_eval_images", "8", "--bpd_strata", "3", "--eval_batch_size", "64",
    "--save_images_steps", "0", "--bpd_steps", "0", "--checkpointing_steps", "0", "--report_to", "none",
    "--num_threads", "1", "--lr_warmup_steps", "1",
]  # fmt: skip


def reset_accelerate() -> None:
    """Each in-process run builds its own Accelerator (accelerate keeps process-wide singletons)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    reset_accelerate()
    threads = torch.get_num_threads()
    yield
    reset_accelerate()
    torch.set_num_threads(threads)


def run_main(output_dir: Path, *extra: str) -> int:
    """The training script in this process, with the fast settings; its exit status."""
    reset_accelerate()
    return run_train_script(["--output_dir", str(output_dir), *FAST, *extra])


def run_command_line(capsys, output_dir: Path, *extra: str) -> tuple[int, list[str]]:
    """The script's command line in-process: its exit status and its stderr lines."""
    capsys.readouterr()
    status = run_main(output_dir, *extra)
    return status, capsys.readouterr().err.splitlines()


def error_line(status: int, stderr: list[str]) -> str:
    """The message of a failed run: exit code 2, one error line, last on stderr (after any log), no traceback."""
    assert status == 2, stderr
    assert not any(line.startswith("Traceback") for line in stderr), stderr
    errors = [line for line in stderr if line.startswith("train.py: error: ")]
    assert errors == stderr[-1:], stderr
    return errors[0].removeprefix("train.py: error: ")


def checkpoint_steps(output_dir: Path) -> list[int]:
    return [step for step, _ in complete_checkpoints(output_dir)]


def assert_finite_checkpoint(checkpoint: Path) -> None:
    """Every tensor of the checkpoint (weights, EMA, optimizer moments) is finite."""
    tensors = [tensor for path in checkpoint.glob("*.safetensors") for tensor in load_file(path).values()]
    optimizer = torch.load(checkpoint / "optimizer.bin", weights_only=True)
    tensors += [value for state in optimizer["state"].values() for value in state.values()]
    assert all(torch.isfinite(tensor).all() for tensor in tensors if tensor.is_floating_point()), checkpoint


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def run_python(*args: str) -> subprocess.CompletedProcess:
    """`python *args` in a subprocess on the CPU (a script and its arguments, or `-m module ...`)."""
    command = [sys.executable, *args]
    return subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300, cwd=REPO)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    tensors = {f"model.{k}": v for k, v in load_file(checkpoint / "model.safetensors").items()}
    tensors |= {f"ema.{k}": v for k, v in load_file(checkpoint / "ema.safetensors").items()}
    return tensors | {f"rng.{k}": v for k, v in load_file(checkpoint / "generators_0.safetensors").items()}


def assert_bitwise_equal(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    different = [name for name in first if not torch.equal(first[name], second[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


# --------------------------------------------------------------------------------------------- the objective


class AffineDenoiser(torch.nn.Module):
    """A stand-in network with a known output: 0.5 x_t + 0.01 t (a UNet2DModel-like `.sample` output)."""

    def forward(self, x_t: torch.Tensor, t: torch.Tensor):
        return type("Output", (), {"sample": 0.5 * x_t + 0.01 * t.to(x_t.dtype).reshape(-1, 1, 1, 1)})()


def reference_alphas_cumprod(num_steps: int) -> torch.Tensor:
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, num_steps, dtype=torch.float64), 0)


def test_objective_is_eq14_on_the_forward_sample_with_importance_weights():
    """loss = mean_i w_i ‖ε_i - ε_θ(√ᾱ x_0 + √(1-ᾱ) ε, t_i)‖²/D, w_i = 1/(T p_t) of the sampler's √E[L²] law."""
    sampler = LossSecondMomentResampler(T, history_per_term=2, uniform_prob=0.1)
    history = torch.arange(1, 2 * T + 1, dtype=torch.float64).reshape(T, 2)
    for column in range(2):
        sampler.update_with_losses(torch.arange(T), history[:, column])
    objective = DiffusionObjective(DDPMPlusScheduler(num_train_timesteps=T), sampler)
    x0 = torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    output = objective(AffineDenoiser(), x0, TrainingGenerators.create(7, 0, torch.device("cpu")))

    replay = TrainingGenerators.create(7, 0, torch.device("cpu"))  # the same streams, drawn again
    rms = history.square().mean(1).sqrt()
    probabilities = 0.9 * rms / rms.sum() + 0.1 / T
    t = torch.multinomial(probabilities, 6, replacement=True, generator=replay.timesteps)
    noise = torch.randn(x0.shape, generator=replay.noise).double()
    alpha_bar = reference_alphas_cumprod(T)[t].reshape(-1, 1, 1, 1)
    x_t = alpha_bar.sqrt() * x0.double() + (1 - alpha_bar).sqrt() * noise
    prediction = 0.5 * x_t + 0.01 * t.double().reshape(-1, 1, 1, 1)
    per_sample = (noise - prediction).square().mean(dim=(1, 2, 3))
    weights = 1 / (T * probabilities[t])
    assert torch.equal(output.timesteps, t)
    torch.testing.assert_close(output.per_sample_loss.double(), per_sample, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(output.loss.double(), (weights * per_sample).mean(), rtol=1e-5, atol=1e-6)


def test_objective_channels_last_gives_the_same_loss():
    unet = UNet2DModel.from_config(unet_config(TINY_UNET_CONFIG))
    x0 = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    losses = []
    for channels_last in (False, True):
        model = unet.to(memory_format=torch.channels_last) if channels_last else unet
        objective = DiffusionObjective(DDPMPlusScheduler(num_train_timesteps=T), UniformSampler(T))
        objective.channels_last = channels_last
        losses.append(objective(model, x0, TrainingGenerators.create(3, 0, torch.device("cpu"))).loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------- data order


def test_sharded_batches_are_disjoint_cover_whole_steps_and_resume_in_place():
    num_items, batch, processes, accumulation = 103, 4, 3, 2
    samplers = [
        ShardedBatchSampler(num_items, batch, num_processes=processes, process_index=rank, accumulation_steps=2)
        for rank in range(processes)
    ]
    steps = num_items // (batch * processes * accumulation)
    assert samplers[0].steps_per_epoch == steps == 4
    for epoch in (0, 1):
        for sampler in samplers:
            sampler.set_position(epoch)
        shards = [list(sampler) for sampler in samplers]
        assert all(len(shard) == steps * accumulation for shard in shards)
        for micro in range(steps * accumulation):
            items = [set(shard[micro]) for shard in shards]
            assert all(len(part) == batch for part in items)
            assert not (items[0] & items[1]) and not (items[0] & items[2]) and not (items[1] & items[2])
        seen = [index for shard in shards for micro_batch in shard for index in micro_batch]
        assert len(seen) == len(set(seen)) == steps * batch * processes * accumulation
    first = [list(ShardedBatchSampler(num_items, batch, seed=5)) for _ in range(2)]
    assert first[0] == first[1]
    resumed = ShardedBatchSampler(num_items, batch, seed=5)
    resumed.set_position(0, 7)
    assert list(resumed) == first[0][7:]
    other_epoch = ShardedBatchSampler(num_items, batch, seed=5)
    other_epoch.set_position(1)
    assert list(other_epoch) != first[0]


def test_too_small_a_dataset_for_one_step_is_refused():
    with pytest.raises(ValueError, match="fewer than one optimizer step"):
        ShardedBatchSampler(10, 4, num_processes=2, accumulation_steps=2)


# --------------------------------------------------------------------------------------------- launch helpers


def test_world_size_mismatch_is_refused():
    with pytest.raises(RuntimeError, match="--multi_gpu --num_processes"):
        check_world_size(1, {"WORLD_SIZE": "2"})
    check_world_size(2, {"WORLD_SIZE": "2"})
    check_world_size(1, {})


def test_threads_share_the_cores_among_local_processes(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert torch_threads_per_process() == cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * cores))
    assert torch_threads_per_process() == 1
    assert torch_threads_per_process(3) == 3
    with pytest.raises(ValueError, match="positive"):
        torch_threads_per_process(0)


# --------------------------------------------------------------------------------------------- checkpoints


def test_latest_checkpoint_ignores_temporary_and_incomplete_directories(tmp_path):
    for step in (2, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "training_state.json").write_text("{}")
    (tmp_path / ".checkpoint-12.tmp").mkdir()  # a save that was killed before its rename
    (tmp_path / "checkpoint-11").mkdir()  # no state file: not a finished checkpoint
    (tmp_path / "checkpoint-x").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert resolve_resume_checkpoint("latest", tmp_path).path == tmp_path / "checkpoint-10"
    assert resolve_resume_checkpoint("latest", tmp_path / "missing") is None
    assert resolve_resume_checkpoint(None, tmp_path) is None
    with pytest.raises(ValueError, match="not a finished checkpoint"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-11"), tmp_path)
    prune_checkpoints(tmp_path, 1, newest_step=2)  # checkpoint-10 predates a resume from an earlier one
    assert checkpoint_steps(tmp_path) == [2, 10]
    prune_checkpoints(tmp_path, 1)
    assert checkpoint_steps(tmp_path) == [10]
    assert (tmp_path / ".checkpoint-12.tmp").is_dir()
    assert remove_unfinished_checkpoints(tmp_path) == [tmp_path / ".checkpoint-12.tmp"]
    assert not (tmp_path / ".checkpoint-12.tmp").exists() and checkpoint_steps(tmp_path) == [10]


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ('{"format": 1, "files": {', "manifest.json cannot be read (truncated or corrupt"),
        ("[1, 2]", "manifest.json holds a JSON list, not an object"),
        ('{"format": 1}', "manifest.json is corrupt: it lists no files with their size and sha256"),
        ('{"format": 1, "files": {"model.safetensors": 12}}', "it lists no files with their size and sha256"),
    ],
)
def test_a_corrupt_manifest_is_a_checkpoint_error_naming_it(tmp_path, manifest, message):
    (tmp_path / "training_state.json").write_text("{}")
    (tmp_path / "manifest.json").write_text(manifest)
    with pytest.raises(CheckpointError) as caught:
        verify_checkpoint(tmp_path)
    assert str(caught.value).startswith(str(tmp_path / "manifest.json")) and message in str(caught.value)


# --------------------------------------------------------------------------------------------- whole runs


def test_default_data_and_model_run_writes_the_ema_pipeline_grid_and_bpd(tmp_path, capsys, caplog):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ddpm_plus.pipeline_ddpm_plus import DDPMPlusPipeline
    from ddpm_plus.plots import FIGURE_DPI, FIGURE_SIZE

    caplog.set_level(logging.INFO)
    out = tmp_path / "run $x^$ \"quoted\" 'and' \\ ü"  # a name that figure titles, cards and snippets must carry
    args = ["--model_config", "digits-16", "--max_train_steps", "3", "--checkpointing_steps", "3"]
    args += ["--bpd_steps", "2", "--report_to", "tensorboard"]  # a held-out evaluation before the final one
    assert run_main(out, *args, "--ema_max_decay", "0.9", "--num_inference_steps", "5") == 0
    # each evaluation phase says what it does, shows its progress, and the held-out bits/dim is printed with its step
    assert "step 3: sampling the grid (4 images, 5 steps)" in caplog.text
    assert "step 2: held-out bits/dim of 8 images" in caplog.text and "step 3: held-out bits/dim of 8" in caplog.text
    assert re.search(r"step 2: held-out \d+\.\d{4} ± \d+\.\d{4} bits/dim", caplog.text)
    bars = capsys.readouterr().err
    assert "step 3: sample grid" in bars and "bits/dim" in bars

    pipeline = DDPMPlusPipeline.from_pretrained(out)
    assert pipeline.unet.config.in_channels == 1 and pipeline.unet.config.sample_size == 16
    assert pipeline.scheduler.config.num_train_timesteps == T
    checkpoint = out / "checkpoint-3"
    ema = load_file(checkpoint / "ema.safetensors")
    raw = load_file(checkpoint / "model.safetensors")
    saved = pipeline.unet.state_dict()
    assert all(torch.equal(saved[name], ema[name]) for name in ema)
    assert any(not torch.equal(raw[name], ema[name]) for name in ema)

    grid = Image.open(out / "samples.png")
    assert grid.mode == "L" and min(grid.size) >= 256
    bpd = json.loads((out / "bpd.json").read_text())
    assert bpd["split"] == "test" and bpd["num_images"] == 8 and bpd["step"] == 3
    assert math.isfinite(bpd["bits_per_dim"]) and bpd["standard_error"] > 0
    low, high = bpd["confidence_interval_95"]
    assert low < bpd["bits_per_dim"] < high
    card = (out / "README.md").read_text()
    assert "bits/dim" in card and "digits" in card
    # the settings as applied (resolved, none None), and a usage snippet that loads this folder and runs
    settings = dict(re.findall(r"^\| `(\w+)` \| `(.*)` \|$", card, flags=re.MULTILINE))
    assert "None" not in settings.values()
    assert settings["num_inference_steps"] == "5" and settings["variance_type"] == "fixed_small"
    assert settings["resolution"] == "16" and settings["max_train_steps"] == "3"
    assert "![Samples from the model](samples.png)" in card and not (out / "sample_grid.png").exists()  # one grid
    snippet = re.search(r"```python\n(.*?)```", card, flags=re.DOTALL).group(1)
    loaded = re.search(r"DDPMPlusPipeline\.from_pretrained\((.*)\)\n", snippet).group(1)
    assert ast.literal_eval(loaded) == str(out)
    namespace: dict = {}
    exec(compile(snippet, "model card snippet", "exec"), namespace)
    assert namespace["bits_per_dim"].shape == (4,) and torch.isfinite(namespace["bits_per_dim"]).all()
    # the figure of the held-out bound: bound.png, in the card, and in TensorBoard at each bits/dim evaluation
    figure_pixels = tuple(round(inches * FIGURE_DPI) for inches in FIGURE_SIZE)
    with Image.open(out / "bound.png") as figure:
        assert figure.format == "PNG" and figure.size == figure_pixels
    assert "![Terms of the variational bound per timestep and the rate-distortion curve](bound.png)" in card
    events = EventAccumulator(str(out / "logs" / "ddpm_plus"), size_guidance={"images": 0})  # the tracker's run
    events.Reload()
    logged = events.Images("bound")
    assert [event.step for event in logged] == [2, 3]
    assert all((event.width, event.height) == figure_pixels for event in logged)


def test_image_folder_with_held_out_fraction(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(20):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"{index:02d}.png")
    out = tmp_path / "run"
    extra = ["--train_data_dir", str(folder), "--held_out_fraction", "0.25", "--train_batch_size", "4"]
    assert run_main(out, *extra, "--max_train_steps", "2", "--random_flip") == 0
    bpd = json.loads((out / "bpd.json").read_text())
    assert bpd["num_images"] == 5 and bpd["split"] == "test"
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()


@pytest.mark.parametrize(
    ("loss", "extra"),
    [
        ("vlb", []),
        ("kl", ["--prediction_type", "sample"]),
        ("hybrid", ["--learn_sigma", "--timestep_sampler", "loss-second-moment"]),
        ("simple", ["--learn_sigma", "--prediction_type", "v_prediction", "--gradient_accumulation_steps", "2"]),
        ("simple", ["--prediction_type", "mean", "--mixed_precision", "bf16", "--snr_gamma", "5"]),
    ],
)
def test_each_loss_type_trains_and_changes_the_weights(tmp_path, loss, extra):
    out = tmp_path / "run"
    assert run_main(out, "--loss", loss, *extra, "--max_train_steps", "2", "--checkpointing_steps", "2") == 0
    state = json.loads((out / "checkpoint-2" / "training_state.json").read_text())
    assert state["run"]["loss"] == loss
    learned = "--learn_sigma" in extra
    assert state["run"]["variance_type"] == ("learned_range" if learned else "fixed_small")
    config = json.loads((out / "unet" / "config.json").read_text())
    assert config["out_channels"] == (6 if learned else 3)
    torch.manual_seed(0)
    initial = UNet2DModel.from_config(config).state_dict()
    trained = load_file(out / "checkpoint-2" / "model.safetensors")
    assert any(not torch.equal(initial[name], trained[name]) for name in trained)
    if "loss-second-moment" in extra:
        assert sum(state["timestep_sampler"]["loss_counts"]) == 2 * 8
    assert math.isfinite(json.loads((out / "bpd.json").read_text())["bits_per_dim"])


def test_resume_after_sigkill_during_a_save_is_bitwise_identical(tmp_path, caplog):
    common = [*FAST, "--max_train_steps", "6", "--checkpointing_steps", "2", "--random_flip"]
    common += ["--save_images_steps", "3", "--bpd_steps", "5"]  # evaluations must not disturb the training RNGs
    common += ["--timestep_sampler", "loss-second-moment", "--num_train_timesteps", "4", "--train_batch_size", "16"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert run_train_script(["--output_dir", str(straight), *common]) == 0

    kill = [str(FAULTS_LAUNCHER), "--kill_while_saving_step", "4", "--"]  # SIGKILL once its part of the save is written
    killed = run_python(*kill, "--output_dir", str(interrupted), *common)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (interrupted / ".checkpoint-4.tmp").is_dir() and not (interrupted / "checkpoint-4").exists()
    assert latest_checkpoint(interrupted) == interrupted / "checkpoint-2"

    reset_accelerate()
    resume = ["--output_dir", str(interrupted), *common, "--resume_from_checkpoint", "latest"]
    with caplog.at_level(logging.INFO):
        assert run_train_script(resume) == 0
    assert not (interrupted / ".checkpoint-4.tmp").exists()
    assert f"Removed {interrupted / '.checkpoint-4.tmp'}, the unfinished checkpoint" in caplog.text
    assert_bitwise_equal(read_weights(straight / "checkpoint-6"), read_weights(interrupted / "checkpoint-6"))
    states = [json.loads((run / "checkpoint-6" / "training_state.json").read_text()) for run in (straight, interrupted)]
    assert states[0]["timestep_sampler"] == states[1]["timestep_sampler"]
    assert states[0]["lr_scheduler"] == states[1]["lr_scheduler"]
    assert sum(states[0]["timestep_sampler"]["loss_counts"]) == 4 * 10  # warmed up: importance sampling ran


def test_two_cpu_processes_train_one_synchronised_model_on_disjoint_shards(tmp_path):
    record = tmp_path / "record"
    launcher = ("-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2")
    launcher += ("--main_process_port", str(free_port()))
    faults = [str(FAULTS_LAUNCHER), "--record_dir", str(record), "--nan_steps", "2", "--"]  # NaN images on process 1
    args = ["--output_dir", str(tmp_path / "run"), *FAST, "--max_train_steps", "3", "--skip_nonfinite_steps", "1"]
    extra = ["--timestep_sampler", "loss-second-moment", "--checkpointing_steps", "3"]
    result = run_python(*launcher, *faults, *args, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stderr
    assert result.stderr.count("step 2: the loss is not finite; skipped the batch") == 1  # logged by the main one
    state = json.loads((tmp_path / "run" / "checkpoint-3" / "training_state.json").read_text())
    assert state["skipped_steps"] == [{"step": 2, "reason": "non-finite loss"}]
    assert sum(state["timestep_sampler"]["loss_counts"]) == 2 * 2 * 8  # the losses of both processes, step 2 left out
    assert (tmp_path / "run" / "checkpoint-3" / "generators_1.safetensors").is_file()

    first, second = (load_file(record / f"weights_{rank}.safetensors") for rank in (0, 1))
    assert_bitwise_equal(first, second)
    torch.manual_seed(0)
    initial = UNet2DModel.from_config(unet_config(TINY_UNET_CONFIG)).state_dict()
    assert any(not torch.equal(initial[name], first[name]) for name in initial)

    steps = [
        [json.loads(line) for line in (record / f"indices_{rank}.jsonl").read_text().splitlines()] for rank in (0, 1)
    ]
    assert [entry["step"] for entry in steps[0]] == [entry["step"] for entry in steps[1]] == [1, 2, 3]
    for rank0, rank1 in zip(steps[0], steps[1], strict=True):
        shard0, shard1 = set(rank0["indices"][0]), set(rank1["indices"][0])
        assert len(shard0) == len(shard1) == 8 and not shard0 & shard1


# --------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model_config", "no-such-model"], "Unknown UNet config"),
        (["--resolution", "18", "--model_config", "digits-16"], "not divisible by 4"),
        (["--train_data_dir", "EMPTY"], "holds no image files"),
        (["--loss", "hybrid"], "add --learn_sigma"),
        (["--learn_sigma", "--variance_type", "fixed_small"], "does not fit the model"),
        (["--mixed_precision", "fp16"], "needs a GPU"),
        (["--train_batch_size", "2000"], "fewer than one optimizer step"),
        (["--dataset_name", "x", "--train_data_dir", "y"], "not both"),
        (["--learning_rate", "0"], "must be positive"),
        (["--num_train_timesteps", "1"], "--num_train_timesteps must be at least 2"),
        (["--skip_nonfinite_steps", "-1"], "--skip_nonfinite_steps must not be negative"),
        (["--eval_fid_every", "-1"], "--eval_fid_every must not be negative"),
        (["--eval_fid_every", "5", "--fid_num_samples", "1"], "--fid_num_samples must be at least 2"),
        (["--eval_fid_every", "5", "--fid_num_reference", "1"], "--fid_num_reference must be at least 2"),
        (["--output_dir", "HAS_FID_DIR"], "fid.json is a directory"),
        (["--output_dir", "FILE"], "exists and is not a directory"),
        (["--output_dir", "FILE/out"], "is not a directory"),
        (["--cache_dir", "FILE/cache"], "--cache_dir"),
        (["--output_dir", "HAS_SAMPLES_DIR"], "samples.png is a directory"),
        (["--output_dir", "HAS_BOUND_DIR"], "bound.png is a directory"),
        (["--push_to_hub", "--hub_model_id", "a/b/c", "--hub_token", "x"], "invalid repository id"),
        (["--push_to_hub", "--hub_model_id", "me/tiny"], "needs a Hub token"),
        (["--resume_from_checkpoint", "EMPTY"], "not a finished checkpoint"),
        (["--report_to", "wandb"], "needs the wandb package: pip install wandb"),
        (["--report_to", "nonsense"], "unknown tracker"),
    ],
)
def test_bad_arguments_fail_before_training_with_one_line_and_exit_code_2(
    tmp_path, capsys, monkeypatch, extra, message
):
    monkeypatch.setattr("ddpm_plus.training.arguments.get_token", lambda: None)  # not logged in to the Hub
    monkeypatch.setattr("accelerate.tracking.get_available_trackers", lambda: [])  # no tracker package installed
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "FILE").write_text("a regular file")
    (tmp_path / "HAS_SAMPLES_DIR" / "samples.png").mkdir(parents=True)
    (tmp_path / "HAS_BOUND_DIR" / "bound.png").mkdir(parents=True)
    (tmp_path / "HAS_FID_DIR" / "fid.json").mkdir(parents=True)
    extra = [str(tmp_path / value) if value.isupper() or value.startswith("FILE") else value for value in extra]
    out = tmp_path / "run"
    status, stderr = run_command_line(capsys, out, *extra)
    assert message in error_line(status, stderr) and len(stderr) == 1
    assert not out.exists() and not (tmp_path / "FILE").is_dir()


@pytest.mark.parametrize(
    ("missing", "extra", "message"),
    [
        ("matplotlib", [], "needs matplotlib, an optional dependency: pip install 'ddpm_plus[train]'"),
        ("torch_fidelity", ["--eval_fid_every", "5"], "--eval_fid_every needs torch_fidelity, an optional dependency: "
         "pip install 'ddpm_plus[eval]'"),
    ],
)  # fmt: skip
def test_training_without_an_extra_it_needs_fails_before_training(
    tmp_path, capsys, monkeypatch, missing, extra, message
):
    installed = importlib.util.find_spec

    def find_spec(name: str, *args):  # `missing` is not installed
        return None if name == missing else installed(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    out = tmp_path / "run"
    status, stderr = run_command_line(capsys, out, "--max_train_steps", "1", *extra)
    assert message in error_line(status, stderr)
    assert not out.exists()


def test_a_schedule_that_needs_settings_the_script_lacks_is_not_offered(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--output_dir", "x", "--lr_scheduler", "piecewise_constant"])
    assert exit_info.value.code == 2 and "invalid choice: 'piecewise_constant'" in capsys.readouterr().err


def test_a_bad_argument_under_accelerate_launch_is_one_line(tmp_path):
    """`accelerate launch -q` passes the script's one line through; without -q accelerate adds its own traceback
    (CalledProcessError) for a failed single-process run, and it exits 1 for any failure either way."""
    launcher = ("-m", "accelerate.commands.launch", "-q", "--num_processes", "1", "--num_machines", "1")
    launcher += ("--mixed_precision", "no", "--dynamo_backend", "no")
    result = run_python(
        *launcher, str(TRAIN_SCRIPT), "--output_dir", str(tmp_path / "run"), "--num_train_timesteps", "1"
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "train.py: error: --num_train_timesteps must be at least 2 (the held-out bits/dim needs the decoder term and "
        "at least one KL term), got 1."
    ]


def test_resuming_with_changed_model_objective_or_data_settings_is_refused(tmp_path, capsys):
    config = tmp_path / "unet.json"
    config.write_text(json.dumps(unet_config(TINY_UNET_CONFIG)))
    out = tmp_path / "run"
    assert run_main(out, "--model_config", str(config), "--max_train_steps", "1", "--checkpointing_steps", "1") == 0
    resume = ["--model_config", str(config), "--max_train_steps", "2", "--resume_from_checkpoint", "latest"]
    changes = [
        (["--num_train_timesteps", "30"], "num_train_timesteps: checkpoint 20, now 30"),
        (["--beta_end", "0.03"], "beta_end: checkpoint 0.02, now 0.03"),
        (["--snr_gamma", "5"], "snr_gamma: checkpoint None, now 5.0"),
        (["--random_flip"], "random_flip: checkpoint False, now True"),
        (["--train_batch_size", "4"], "train_batch_size: checkpoint 8, now 4"),
    ]
    for extra, message in changes:
        assert message in error_line(*run_command_line(capsys, out, *resume, *extra))
    config.write_text(json.dumps(unet_config(TINY_UNET_CONFIG) | {"dropout": 0.1}))  # same name, new content
    assert "unet_config.dropout: checkpoint 0.0, now 0.1" in error_line(*run_command_line(capsys, out, *resume))
    assert checkpoint_steps(out) == [1]


def test_switching_to_fp16_needs_the_loss_scaler_state(tmp_path):
    state = {"settings": {"mixed_precision": "bf16"}}
    assert loss_scaler_difference(tmp_path, state, "bf16") == []
    assert loss_scaler_difference(tmp_path, state, "fp16") == [
        "mixed_precision: checkpoint 'bf16', now 'fp16' (the checkpoint has no loss-scaler state)"
    ]
    (tmp_path / "scaler.pt").write_bytes(b"")
    assert loss_scaler_difference(tmp_path, state, "fp16") == []


def test_resume_honours_a_new_learning_rate_and_optimizer_and_ema_settings(tmp_path, caplog):
    out = tmp_path / "run"
    common = ["--lr_scheduler", "constant_with_warmup", "--checkpointing_steps", "1"]
    assert run_main(out, *common, "--max_train_steps", "1", "--learning_rate", "1e-3") == 0
    changed = ["--learning_rate", "5e-3", "--adam_weight_decay", "0.01", "--adam_beta2", "0.99"]
    changed += ["--ema_max_decay", "0.5", "--ema_power", "0.5"]
    with caplog.at_level(logging.INFO):
        assert run_main(out, *common, "--max_train_steps", "2", "--resume_from_checkpoint", "latest", *changed) == 0
    assert "learning_rate 0.001 → 0.005" in caplog.text
    group = torch.load(out / "checkpoint-2" / "optimizer.bin", weights_only=True)["param_groups"][0]
    assert group["lr"] == group["initial_lr"] == 5e-3
    assert group["weight_decay"] == 0.01 and tuple(group["betas"]) == (0.9, 0.99)
    state = json.loads((out / "checkpoint-2" / "training_state.json").read_text())
    assert state["lr_scheduler"]["base_lrs"] == state["lr_scheduler"]["_last_lr"] == [5e-3]
    assert state["ema"]["decay"] == 0.5 and state["ema"]["power"] == 0.5 and state["ema"]["optimization_step"] == 2
    assert state["settings"]["learning_rate"] == 5e-3


# --------------------------------------------------------------------------------------------- divergence


def test_divergence_stops_before_saving_and_keeps_the_finite_checkpoints(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Trainer, "train_step", nan_images_at({5}))
    out = tmp_path / "run"
    extra = ["--max_train_steps", "8", "--checkpointing_steps", "1", "--checkpoints_total_limit", "2"]
    message = error_line(*run_command_line(capsys, out, *extra, "--logging_steps", "100"))
    assert message.startswith("Training diverged at step 5: the loss is not finite. Likely causes: a learning rate")
    assert f"--resume_from_checkpoint {out / 'checkpoint-4'}" in message
    assert checkpoint_steps(out) == [3, 4] and not list(out.glob(".checkpoint-*"))
    for checkpoint in (out / "checkpoint-3", out / "checkpoint-4"):
        assert_finite_checkpoint(checkpoint)
    assert not (out / "unet").exists() and not (out / "model_index.json").exists() and not (out / "README.md").exists()


def test_nonfinite_weights_are_never_saved(tmp_path, capsys, monkeypatch):
    """Weights that overflow in an update from a finite loss and gradient (simulated) stop the run before a save."""

    def overflowing_optimizer(parameters, **kwargs):
        optimizer = build_optimizer(parameters, **kwargs)
        step = optimizer.step

        def step_then_overflow(self, *args, **step_kwargs):
            step(*args, **step_kwargs)
            if int(self.state[parameters[0]]["step"]) == 2:
                parameters[0].data.fill_(math.inf)

        optimizer.step = types.MethodType(step_then_overflow, optimizer)  # a method, as the LR scheduler wraps it
        return optimizer

    monkeypatch.setattr("ddpm_plus.training.build_optimizer", overflowing_optimizer)  # as the script imports it
    out = tmp_path / "run"
    extra = ["--max_train_steps", "3", "--checkpointing_steps", "1", "--checkpoints_total_limit", "1"]
    message = error_line(*run_command_line(capsys, out, *extra))
    assert message.startswith("Training diverged at step 2: the weights are not finite.")
    assert checkpoint_steps(out) == [1] and not list(out.glob(".checkpoint-*")) and not (out / "unet").exists()
    assert_finite_checkpoint(out / "checkpoint-1")


def test_skip_nonfinite_steps_skips_bad_batches_without_an_update_then_stops_beyond_the_limit(
    tmp_path, capsys, caplog, monkeypatch
):
    monkeypatch.setattr(Trainer, "train_step", nan_images_at({2, 4}))
    out = tmp_path / "run"
    common = ["--checkpointing_steps", "1", "--timestep_sampler", "loss-second-moment"]
    with caplog.at_level(logging.WARNING):
        message = error_line(
            *run_command_line(capsys, out, *common, "--max_train_steps", "5", "--skip_nonfinite_steps", "1")
        )
    assert "step 2: the loss is not finite; skipped the batch without an update (1 of at most 1" in caplog.text
    assert message.startswith("Training diverged at step 4: the loss is not finite (2 bad batches, more than ")
    assert checkpoint_steps(out) == [1, 2, 3]
    weights = [read_weights(out / f"checkpoint-{step}") for step in (1, 2, 3)]
    states = [json.loads((out / f"checkpoint-{step}" / "training_state.json").read_text()) for step in (1, 2, 3)]
    trained = [name for name in weights[0] if not name.startswith("rng.")]  # the noise streams move on regardless
    assert_bitwise_equal({n: weights[0][n] for n in trained}, {n: weights[1][n] for n in trained})
    assert any(not torch.equal(weights[1][name], weights[2][name]) for name in trained)
    for key in ("lr_scheduler", "timestep_sampler", "ema"):
        assert states[0][key] == states[1][key] != states[2][key]
    assert states[1]["skipped_steps"] == [{"step": 2, "reason": "non-finite loss"}]

    # resumed with a larger allowance (the steps skipped before count towards it): the run completes
    monkeypatch.setattr(Trainer, "train_step", nan_images_at({4}))
    extra = ["--max_train_steps", "5", "--resume_from_checkpoint", "latest", "--skip_nonfinite_steps", "2"]
    status, stderr = run_command_line(capsys, out, *common, *extra)
    assert status == 0, stderr
    final = json.loads((out / "checkpoint-5" / "training_state.json").read_text())
    assert [entry["step"] for entry in final["skipped_steps"]] == [2, 4]
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()


# --------------------------------------------------------------------------------------------- damaged checkpoints


def test_a_corrupt_checkpoint_is_named_and_latest_falls_back_to_the_newest_that_verifies(tmp_path, capsys, caplog):
    out = tmp_path / "run"
    assert run_main(out, "--max_train_steps", "2", "--checkpointing_steps", "1") == 0
    assert verify_checkpoint(out / "checkpoint-2")
    intact = shutil.copytree(out / "checkpoint-1", tmp_path / "intact-checkpoint-1")
    truncate(out / "checkpoint-2" / "ema.safetensors")
    (out / "checkpoint-1" / "training_state.json").write_text("{")  # also damaged, but only in its content

    message = error_line(*run_command_line(capsys, out, "--resume_from_checkpoint", str(out / "checkpoint-2")))
    assert message.startswith(f"{out / 'checkpoint-2' / 'ema.safetensors'} has ")
    message = error_line(*run_command_line(capsys, out, "--resume_from_checkpoint", "latest"))
    assert message.startswith(f"No checkpoint in {out} can be resumed from: {out / 'checkpoint-2' / 'ema.safetensors'}")
    assert f"{out / 'checkpoint-1' / 'training_state.json'} has 1 bytes, its manifest records" in message

    shutil.rmtree(out / "checkpoint-1")
    shutil.copytree(intact, out / "checkpoint-1")
    with caplog.at_level(logging.INFO):
        assert (
            run_main(out, "--max_train_steps", "3", "--checkpointing_steps", "1", "--resume_from_checkpoint", "latest")
            == 0
        )
    assert f"Not resuming from {out / 'checkpoint-2'}: {out / 'checkpoint-2' / 'ema.safetensors'} has" in caplog.text
    assert f"Resumed from {out / 'checkpoint-1'} at step 1." in caplog.text
    assert checkpoint_steps(out) == [1, 2, 3] and all(verify_checkpoint(out / f"checkpoint-{s}") for s in (2, 3))


def test_a_checkpoint_without_manifest_is_checked_and_accepted_with_a_warning(tmp_path, capsys, caplog):
    """Checkpoints written before manifests (and before the longer run signature) still resume: their structure and
    finiteness are checked instead, and settings are compared through their recorded arguments."""
    out = tmp_path / "run"
    assert run_main(out, "--max_train_steps", "3", "--checkpointing_steps", "1") == 0
    for step in (1, 2, 3):
        (out / f"checkpoint-{step}" / "manifest.json").unlink()
        state_file = out / f"checkpoint-{step}" / "training_state.json"
        state = json.loads(state_file.read_text())
        for key in ("unet_config", "beta_end", "snr_gamma"):
            del state["run"][key]
        state_file.write_text(json.dumps(state))
    truncate(out / "checkpoint-1" / "training_state.json")
    weights = load_file(out / "checkpoint-3" / "model.safetensors")  # as an earlier version saved a diverged run
    save_file(
        {name: torch.full_like(tensor, math.nan) for name, tensor in weights.items()},
        out / "checkpoint-3" / "model.safetensors",
    )

    message = error_line(*run_command_line(capsys, out, "--resume_from_checkpoint", str(out / "checkpoint-1")))
    assert message.startswith(f"{out / 'checkpoint-1' / 'training_state.json'} cannot be read (truncated or corrupt")
    message = error_line(*run_command_line(capsys, out, "--resume_from_checkpoint", "latest", "--beta_end", "0.03"))
    assert "beta_end: checkpoint 0.02, now 0.03" in message  # found among the recorded arguments
    with caplog.at_level(logging.WARNING):
        assert run_main(out, "--max_train_steps", "3", "--resume_from_checkpoint", "latest") == 0
    assert f"{out / 'checkpoint-3' / 'model.safetensors'} holds non-finite values" in caplog.text
    assert f"{out / 'checkpoint-2'} has no manifest" in caplog.text
    assert "does not record unet_config (an earlier version): not checked" in caplog.text


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    def full_disk_at_step_2(ema, names, path):
        if "checkpoint-2" in str(path):
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        save_ema_weights(ema, names, path)

    monkeypatch.setattr("ddpm_plus.training.trainer.save_ema_weights", full_disk_at_step_2)
    out = tmp_path / "run"
    message = error_line(*run_command_line(capsys, out, "--max_train_steps", "3", "--checkpointing_steps", "1"))
    assert message == (
        f"Could not write checkpoint checkpoint-2 in {out}: the disk is full. The checkpoint "
        f"{out / 'checkpoint-1'} is intact: resume from it with --resume_from_checkpoint latest once there is room."
    )
    assert checkpoint_steps(out) == [1] and not list(out.glob(".checkpoint-*")) and not (out / "unet").exists()
    assert verify_checkpoint(out / "checkpoint-1")
    monkeypatch.setattr("ddpm_plus.training.trainer.save_ema_weights", save_ema_weights)
    assert (
        run_main(out, "--max_train_steps", "3", "--checkpointing_steps", "1", "--resume_from_checkpoint", "latest") == 0
    )
    assert checkpoint_steps(out) == [1, 2, 3]


@pytest.mark.parametrize(
    ("error", "free_bytes", "full"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), 10**9, True),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), 10**9, True),
        (RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"), 10**9, True),
        (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"), 4096, True),  # torch
        (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"), 10**9, False),
        (OSError(errno.EACCES, "Permission denied"), 10**9, False),
    ],
)
def test_a_full_disk_is_recognised_in_the_forms_torch_and_safetensors_report(
    tmp_path, monkeypatch, error, free_bytes, full
):
    monkeypatch.setattr("shutil.disk_usage", lambda path: type("Usage", (), {"free": free_bytes})())
    assert disk_is_full(error, tmp_path) is full


def test_hub_token_is_used_for_the_upload_but_never_written(tmp_path, monkeypatch):
    uploads = []
    monkeypatch.setattr(  # where the script imports it from
        "ddpm_plus.hub.push_pipeline_to_hub", lambda pipeline, repo_id, **kwargs: uploads.append(kwargs)
    )
    secret = "hf_secret_value_123"
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="visible to other users"):
        run_main(
            out, "--max_train_steps", "1", "--checkpointing_steps", "1", "--report_to", "tensorboard",
            "--push_to_hub", "--hub_model_id", "me/tiny", "--hub_token", secret,
        )  # fmt: skip
    assert uploads[0]["token"] == secret and uploads[0]["bits_per_dim"] is not None
    for path in out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_compiled_training_writes_checkpoints_that_resume_without_compile(tmp_path):
    out = tmp_path / "run"
    assert run_main(out, "--compile", "--max_train_steps", "2", "--checkpointing_steps", "2") == 0
    assert "conv_in.weight" in load_file(out / "checkpoint-2" / "model.safetensors")
    assert (
        run_main(out, "--max_train_steps", "3", "--checkpointing_steps", "3", "--resume_from_checkpoint", "latest") == 0
    )
    assert json.loads((out / "checkpoint-3" / "training_state.json").read_text())["global_step"] == 3


# The flags of diffusers' examples/unconditional_image_generation/train_unconditional.py (its main branch).
DIFFUSERS_TRAIN_UNCONDITIONAL_FLAGS = (
    "dataset_name", "dataset_config_name", "model_config_name_or_path", "train_data_dir", "output_dir",
    "overwrite_output_dir", "cache_dir", "resolution", "center_crop", "random_flip", "train_batch_size",
    "eval_batch_size", "dataloader_num_workers", "num_epochs", "save_images_epochs", "save_model_epochs",
    "gradient_accumulation_steps", "learning_rate", "lr_scheduler", "lr_warmup_steps", "adam_beta1", "adam_beta2",
    "adam_weight_decay", "adam_epsilon", "use_ema", "ema_inv_gamma", "ema_power", "ema_max_decay", "push_to_hub",
    "hub_token", "hub_model_id", "hub_private_repo", "logger", "logging_dir", "local_rank", "mixed_precision",
    "prediction_type", "ddpm_num_steps", "ddpm_num_inference_steps", "ddpm_beta_schedule", "checkpointing_steps",
    "checkpoints_total_limit", "resume_from_checkpoint", "enable_xformers_memory_efficient_attention",
    "preserve_input_precision",
)  # fmt: skip


def test_diffusers_train_unconditional_commands_run_here_with_their_flag_names():
    """The command of diffusers' README parses as is; its renamed flags are aliases of ours; the table of
    docs/training.md maps every one of its flags."""
    readme_command = (
        "--dataset_name=huggan/flowers-102-categories --resolution=64 --center_crop --random_flip "
        "--output_dir=ddpm-ema-flowers-64 --train_batch_size=16 --num_epochs=100 --gradient_accumulation_steps=1 "
        "--use_ema --learning_rate=1e-4 --lr_warmup_steps=500 --mixed_precision=no --push_to_hub"
    ).split()
    args = parse_args(readme_command)
    assert args.dataset_name == "huggan/flowers-102-categories" and args.num_epochs == 100 and args.push_to_hub
    aliases = ["--ddpm_num_steps", "50", "--ddpm_beta_schedule", "squaredcos_cap_v2", "--ddpm_num_inference_steps"]
    aliases += ["10", "--logger", "none", "--model_config_name_or_path", "tiny-32", "--output_dir", "out"]
    args = parse_args(aliases)
    assert (args.num_train_timesteps, args.beta_schedule, args.num_inference_steps) == (50, "squaredcos_cap_v2", 10)
    assert (args.report_to, args.model_config) == ("none", "tiny-32")
    table = (REPO / "docs" / "training.md").read_text(encoding="utf-8")
    section = table[table.index("### Coming from diffusers") : table.index("### Training loop")]
    first_cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `--")]
    documented = {flag for cell in first_cells for flag in re.findall(r"`--(\w+)`", cell)}
    assert set(DIFFUSERS_TRAIN_UNCONDITIONAL_FLAGS) <= documented
