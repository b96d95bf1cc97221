"""Tests of `bench/gpu_check.py`: its --dry-run end to end on the CPU, and the GPU code paths that a CPU can run.

The dry run (every part at toy size, ~40 s on 2 cores) runs once for this module, as a subprocess, as it will on a
GPU machine; most tests read its JSON report. It covers bf16 autocast training through accelerate on the CPU
(part a), `train_scripts/train.py --mixed_precision bf16` with a checkpoint, SIGKILL and resume (part b), and
sampling with a CPU generator against diffusers' DDPMPipeline (part c).
"""

import importlib
import json
import math
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import diffusers
import pytest
import torch
from diffusers import UNet2DModel
from filelock import FileLock
from pipeline_fixtures import tiny_unet

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.py"
sys.path.append(str(SCRIPT.parent))  # appended: bench/ module names must not shadow anything
gpu_check = importlib.import_module("gpu_check")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> dict:
    """The JSON report of `python bench/gpu_check.py --dry-run`, with its text report under "text".

    It runs once per test session: pytest-xdist workers share the session's temporary directory, and the first
    worker to take the lock runs it while the others wait for its report.
    """
    base = tmp_path_factory.getbasetemp()
    out = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "gpu_check_dry_run"
    with FileLock(f"{out}.lock"):
        if not out.is_dir():
            environment = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
            command = [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)]
            result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300, cwd=REPO)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    return report | {"text": (out / "gpu_check.txt").read_text()}


def results(report: dict, part: str) -> dict:
    return report["parts"][part]["results"]


def assert_positive_finite(*values: float) -> None:
    for value in values:
        assert isinstance(value, float) and math.isfinite(value) and value > 0, value


# --------------------------------------------------------------------------------------------- the dry run


def test_dry_run_runs_every_part_within_its_budget_and_records_the_environment(dry_run):
    statuses = {key: part["status"] for key, part in dry_run["parts"].items()}
    assert statuses == {"a": "ok", "b": "ok", "c": "ok", "d": "ok", "e": "ok", "f": "ok"}
    for key, part in dry_run["parts"].items():
        assert part["seconds"] < part["budget_s"] == gpu_check.DRY_RUN_SIZES.budgets_s[key]
    environment = dry_run["environment"]
    assert environment["dry_run"] is True and environment["device"] == "cpu" and environment["gpu"] is None
    assert environment["torch"] == torch.__version__ and environment["diffusers"] == diffusers.__version__
    assert datetime.fromisoformat(environment["date"]).tzinfo is not None
    text = dry_run["text"]
    assert "DRY RUN" in text
    for key, status in statuses.items():
        assert f"({key}) {gpu_check.PARTS[key].title}: {status}" in text


def test_dry_run_times_bf16_training_through_accelerate_on_the_cpu(dry_run):
    part = results(dry_run, "a")
    assert part["mixed_precision"] == "bf16" and part["model_config"] == "dry-run-tiny"
    for loop in ("ours", "diffusers", "ours_compiled"):
        assert_positive_finite(part[loop]["images_per_s"], part[loop]["ms_per_step"], part[loop]["first_step_s"])
        assert part[loop]["images_per_s"] == pytest.approx(1000 * part["batch_size"] / part[loop]["ms_per_step"])
        assert part[loop]["peak_memory_gib"] is None  # measured on CUDA only
    # accelerate's autocast ran both training steps' convolutions in bfloat16 on the CPU
    assert part["ours"]["conv_dtypes"] == part["diffusers"]["conv_dtypes"] == ["bfloat16"]
    assert part["ours_compiled"]["compile_backend"] == "aot_eager"
    ratio = part["diffusers"]["ms_per_step"] / part["ours"]["ms_per_step"]
    assert part["ratio_ours_to_diffusers"] == pytest.approx(ratio)
    assert_positive_finite(part["ratio_compiled_to_diffusers"])
    assert "goals_met" not in part  # toy sizes on a CPU say nothing about the GPU goals


def test_dry_run_bf16_checkpoint_kill_and_resume_is_bitwise_identical_on_the_cpu(dry_run):
    part = results(dry_run, "b")
    assert part["mixed_precision"] == "bf16" and part["deterministic"] is True
    assert part["killed_after"] == part["steps"] // 2 == 10
    assert part["bitwise_equal"] is True and part["max_abs_diff"] == 0.0
    unet = UNet2DModel.from_config(gpu_check.DRY_RUN_UNET_CONFIG)
    assert part["tensors_compared"] == 2 * len(list(unet.parameters()))  # raw and EMA weights
    assert part["determinism_warnings"] == []
    assert set(part["run_seconds"]) == {"uninterrupted", "killed", "resumed"}


def test_dry_run_sampling_matches_ddpm_pipeline_and_half_precision_is_finite(dry_run):
    part = results(dry_run, "c")
    assert part["fp32, cpu generator"]["bitwise_equal_to_DDPMPipeline"] is True
    assert "fp32, cuda generator" not in part and "cuda generator, cpu pipeline" not in part
    for dtype in ("float16", "bfloat16"):
        assert part[dtype]["finite"] is True
        assert_positive_finite(part[dtype]["images_per_s"])
    assert part["float16"]["output_type_pil"] == "ok"


def test_dry_run_likelihood_fp32_matches_float64_and_counts_evaluations(dry_run):
    part = results(dry_run, "d")
    check = part["check"]
    assert len(check["cpu_float64_bpd"]) == len(check["fp32"]["bpd"]) == check["images"] == 2
    assert all(math.isfinite(value) and value > 0 for value in check["cpu_float64_bpd"])
    assert check["fp32"]["max_abs_diff"] <= gpu_check.BPD_TOLERANCE and check["fp32"]["within_0.001"] is True
    assert "tf32" not in check  # a CUDA setting
    speed = part["speed"]
    assert_positive_finite(speed["fp32"]["evaluations_per_s"], speed["fp32"]["seconds"])
    evaluations = speed["fp32"]["evaluations_per_s"] * speed["fp32"]["seconds"]
    assert evaluations == pytest.approx(speed["images"] * speed["timesteps"])


def test_dry_run_posterior_sampling_is_finite_in_fp32_and_bf16(dry_run):
    part = results(dry_run, "e")
    for dtype in ("float32", "bfloat16"):
        assert part[dtype]["finite"] is True
        assert_positive_finite(part[dtype]["images_per_s"])


def test_dry_run_runs_the_evaluation_commands(dry_run):
    part = results(dry_run, "f")
    sample = part["sample float32"]
    assert "sample bfloat16" not in part  # half precision is refused on the CPU
    assert sample["archive_shape"] == [part["num_images"], 16, 16, 3]
    assert_positive_finite(sample["images_per_s"], sample["rerun_seconds"])
    assert part["bpd exact"]["finite"] is True and part["bpd exact"]["mean_bpd"] > 0
    assert_positive_finite(part["bpd exact"]["evaluations_per_s"])
    assert "2 CPU processes" in part["several_gpus"]


# --------------------------------------------------------------------------------------------- command line


def test_without_cuda_the_full_check_exits_with_code_2_and_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for arguments in ([], ["--device", "cpu"]):
        with pytest.raises(SystemExit) as exit_info:
            gpu_check.main([*arguments, "--out", str(tmp_path)])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and error.startswith("gpu_check: ") and "--dry-run" in error
    assert not list(tmp_path.iterdir())
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--dry-run", "--parts", "a,x"])
    assert exit_info.value.code == 2 and "choose among a,b,c,d,e,f" in capsys.readouterr().err


def test_a_failing_or_overrunning_part_is_reported_and_the_others_still_run(monkeypatch, tmp_path):
    def fails(context, results):
        results["measured_before_the_error"] = 1.0
        raise RuntimeError("boom")

    def overruns(context, results):
        time.sleep(10)

    monkeypatch.setitem(gpu_check.PARTS, "c", gpu_check.Part("fails", fails))
    monkeypatch.setitem(gpu_check.PARTS, "d", gpu_check.Part("overruns", overruns))
    monkeypatch.setitem(gpu_check.DRY_RUN_SIZES.budgets_s, "d", 0.2)
    assert gpu_check.main(["--dry-run", "--parts", "c,d,f", "--out", str(tmp_path)]) == 1

    parts = json.loads((tmp_path / "gpu_check.json").read_text())["parts"]
    assert {key: parts[key]["status"] for key in "abe"} == {"a": "skipped", "b": "skipped", "e": "skipped"}
    assert parts["c"]["status"] == "failed" and parts["c"]["error"] == "RuntimeError: boom"
    assert parts["c"]["results"] == {"measured_before_the_error": 1.0}
    assert parts["d"]["status"] == "failed" and "exceeded its time budget of 0.2 s" in parts["d"]["error"]
    assert parts["d"]["seconds"] < 5
    assert parts["f"]["status"] == "ok"
    assert "error: RuntimeError: boom" in (tmp_path / "gpu_check.txt").read_text()


# --------------------------------------------------------------------------------------------- building blocks


class CudaGeneratorStandIn:
    """All the pipelines read of a generator before they draw: its device (a real one needs CUDA)."""

    device = torch.device("cuda")


def test_a_generator_on_another_device_fails_before_sampling_exactly_as_in_diffusers():
    errors = gpu_check.generator_mismatch_errors(tiny_unet(), CudaGeneratorStandIn())
    expected = "ValueError: Cannot generate a cpu tensor from a generator of type cuda."
    assert errors == {"DDPMPlusPipeline": expected, "DDPMPipeline": expected}


def test_weight_differences_are_bitwise_or_the_largest_absolute_difference():
    first = {"a": torch.zeros(3), "b": torch.ones(2, 2)}
    same = {name: tensor.clone() for name, tensor in first.items()}
    assert gpu_check.weight_differences(first, same) == {
        "bitwise_equal": True,
        "max_abs_diff": 0.0,
        "tensors_compared": 2,
    }
    nudged = same | {"b": torch.tensor([[1.0, 1.0], [1.0, 1.0 + 2**-20]])}
    differences = gpu_check.weight_differences(first, nudged)
    assert differences["bitwise_equal"] is False and differences["max_abs_diff"] == 2**-20
    with pytest.raises(ValueError, match="different tensors"):
        gpu_check.weight_differences(first, {"a": first["a"]})
