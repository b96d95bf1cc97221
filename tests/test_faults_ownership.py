"""The fault table of run ownership (docs/failure-behaviour.md, "Run ownership"): a second writer into a location in
use, a new run over finished work, a full disk while the final pipeline is saved, and checkpoints whose identity
disagrees with their manifest. Each case runs the command as a user does (tests/faults.py) and checks its outcome and
that no earlier output changed; the concurrency cases hold a real first run at a point while a second one starts."""

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from faults import (
    assert_refused_without_change,
    held_at,
    refusal,
    run_ddpm_plus,
    run_train,
    run_with_full_disk,
    tree_hashes,
)
from openai_fixtures.weights import write_checkpoint
from pipeline_fixtures import SCHEDULER_CONFIG, tiny_unet
from test_convert import MANIFEST as UPSTREAM
from test_train import FAST

from ddpm_plus import DDPMPlusPipeline, DDPMPlusScheduler
from ddpm_plus.cli import main as ddpm_plus
from ddpm_plus.training import CheckpointError, check_new_run, complete_checkpoints, resolve_resume_checkpoint

SAMPLE = ["--steps", "3", "--num-threads", "1", "--batch-size", "2"]
BPD = ["--data", "digits", "--max-images", "2", "--num-timesteps", "full", "--num-threads", "1"]
UPSTREAM_NAME = "improved_lsun_like"  # an improved-diffusion checkpoint to convert
CONVERT = ["--from", UPSTREAM[UPSTREAM_NAME]["source"], "--flags", UPSTREAM[UPSTREAM_NAME]["flags"]]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A saved tiny pipeline (8x8 RGB, T = 20) for sample, its grey twin for bpd on the digits, and an upstream
    checkpoint for convert."""
    directory = tmp_path_factory.mktemp("models")
    DDPMPlusPipeline(tiny_unet(), DDPMPlusScheduler(**SCHEDULER_CONFIG)).save_pretrained(directory / "rgb")
    DDPMPlusPipeline(tiny_unet(channels=1), DDPMPlusScheduler(**SCHEDULER_CONFIG)).save_pretrained(directory / "grey")
    write_checkpoint(UPSTREAM[UPSTREAM_NAME], directory / "upstream.pt")
    return directory


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A finished training run: checkpoints 1 and 2 and the pipeline."""
    out = tmp_path_factory.mktemp("trained") / "run"
    result = run_train(
        "--output_dir", str(out), *FAST, "--max_train_steps", "2", "--checkpointing_steps", "1", cwd=out.parent
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def checkpoint_steps(output_dir: Path) -> list[int]:
    return [step for step, _ in complete_checkpoints(output_dir)]


def edit_manifest(checkpoint: Path, edit: Callable[[dict], None]) -> None:
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    edit(manifest)
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


# --------------------------------------------------------------------------------------------- a second writer


@dataclass(frozen=True)
class Holder:
    """A first run, held at a call, and the command a second run gives into the same location."""

    target: str  # where the first run is held
    call: int
    command: Callable[[Path, Path], list[str]]  # (tmp_path, models) -> `train ...` or `ddpm-plus ...`
    location: Callable[[Path], str]  # the location's text in the refusal
    holder: str  # the holder's command in the refusal


def train(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda tmp_path, models: ["train", "--output_dir", str(tmp_path / "run"), *FAST, *extra]


def sample(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda tmp_path, models: [
        "ddpm-plus", "sample", "--model", str(models / "rgb"), *SAMPLE, "--out", str(tmp_path / "grid.png"), *extra
    ]  # fmt: skip


def bpd(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda tmp_path, models: [
        "ddpm-plus", "bpd", "--model", str(models / "grey"), *BPD, "--output", str(tmp_path / "bpd.json"), *extra
    ]  # fmt: skip


def convert(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda tmp_path, models: [
        "ddpm-plus", "convert", *CONVERT, "--checkpoint", str(models / "upstream.pt"),
        "--out", str(tmp_path / "converted"), *extra,
    ]  # fmt: skip


HOLDERS = {
    "train-mid-save": Holder(  # held while checkpoint-2 is being written: .checkpoint-2.tmp must survive the second run
        "ddpm_plus.training.trainer:Trainer.write_extra_state", 2,
        train("--max_train_steps", "4", "--checkpointing_steps", "1"),
        lambda tmp_path: f"--output_dir {tmp_path / 'run'}", "train.py",
    ),
    "sample": Holder(
        "ddpm_plus.cli_sample:write_outputs", 1, sample("--num-images", "3"),
        lambda tmp_path: f"--out {tmp_path / 'grid.png'}", "ddpm-plus sample",
    ),
    "bpd": Holder(
        "ddpm_plus.cli_bpd:_write_outputs", 1, bpd(),
        lambda tmp_path: f"--output {tmp_path / 'bpd.json'}", "ddpm-plus bpd",
    ),
    "convert": Holder(
        "ddpm_plus.cli_convert:save_conversion", 1, convert(),
        lambda tmp_path: f"--out {tmp_path / 'converted'}", "ddpm-plus convert",
    ),
}  # fmt: skip


def run_command(command: list[str], cwd: Path):
    runner = run_train if command[0] == "train" else run_ddpm_plus
    return runner(*command[1:], cwd=cwd)


@pytest.mark.parametrize("name", list(HOLDERS))
def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_frees_the_location(name, models, tmp_path):
    case = HOLDERS[name]
    command = case.command(tmp_path, models)
    with held_at(case.target, *command, cwd=tmp_path, call=case.call) as pid:
        before = tree_hashes(tmp_path)
        second = run_command(command, tmp_path)
        message = refusal(second)
        assert message.startswith(f"{case.location(tmp_path)} is in use by another run ({case.holder}, pid {pid} on ")
        assert message.endswith("wait for it to finish or choose another location.")
        assert tree_hashes(tmp_path) == before  # nothing of the first run's, its temporaries included, was touched
    # SIGKILLed: the lock is free, and the command resumes (training: from the newest finished checkpoint)
    if command[0] == "train":
        assert (tmp_path / "run" / ".checkpoint-2.tmp").is_dir() and checkpoint_steps(tmp_path / "run") == [1]
        command += ["--resume_from_checkpoint", "latest"]
    rerun = run_command(command, tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    if command[0] == "train":
        assert "Resumed from" in rerun.stderr and checkpoint_steps(tmp_path / "run") == [1, 2, 3, 4]
        assert not (tmp_path / "run" / ".checkpoint-2.tmp").exists()


# --------------------------------------------------------------------------------------------- the fault table


@dataclass(frozen=True)
class Case:
    """Earlier outputs (`prepare`), a command over them, and its outcome: a one-line refusal containing `refused`,
    or exit 0 and `handled` (which checks what changed); the files that `kept` names (default: all for a refusal,
    none otherwise) are unchanged."""

    prepare: Callable[[Path, Path, Path], None]  # (tmp_path, trained run, models)
    command: Callable[[Path, Path], list[str]]  # (tmp_path, models)
    refused: Callable[[Path], str] | None = None
    handled: Callable[[Path, str], None] | None = None  # (tmp_path, stderr)
    kept: Callable[[Path], list[Path]] | None = None


def copy_run(tmp_path: Path, trained: Path, models: Path) -> None:
    shutil.copytree(trained, tmp_path / "run")


def renamed_checkpoint(tmp_path: Path, trained: Path, models: Path) -> None:
    copy_run(tmp_path, trained, models)
    (tmp_path / "run" / "checkpoint-2").rename(tmp_path / "run" / "checkpoint-5")


def earlier(command: Callable[[Path, Path], list[str]]) -> Callable[[Path, Path, Path], None]:
    """An earlier run of `command` (a `ddpm-plus` one, in this process)."""
    return lambda tmp_path, trained, models: _assert_ran(ddpm_plus(command(tmp_path, models)[1:]))


def _assert_ran(status: int) -> None:
    assert status == 0


def overwritten_run(tmp_path: Path, stderr: str) -> None:
    run = tmp_path / "run"
    assert (
        f"--overwrite_output_dir: this run replaces the checkpoints checkpoint-1, checkpoint-2 and a saved pipeline of "
        f"an earlier run in {run}" in stderr
    )
    assert checkpoint_steps(run) == [1]  # this run's; the earlier checkpoint-2 went once it had one
    assert json.loads((run / "checkpoint-1" / "training_state.json").read_text())["settings"]["max_train_steps"] == 1


def resumed_past_the_renamed_checkpoint(tmp_path: Path, stderr: str) -> None:
    run = tmp_path / "run"
    assert (
        f"Not resuming from {run / 'checkpoint-5'}: {run / 'checkpoint-5'} is named for step 5 but holds step 2"
        in stderr
    )
    assert f"Resumed from {run / 'checkpoint-1'} at step 1." in stderr
    assert checkpoint_steps(run) == [1, 2, 5]


def sampled_two_without_stale_files(tmp_path: Path, stderr: str) -> None:
    names = sorted(path.name for path in (tmp_path / "grid").iterdir())
    assert names == ["000000.png", "000001.png", "manifest.json", "samples_2x8x8x3.npz"]


def replaced_report(tmp_path: Path, stderr: str) -> None:
    assert json.loads((tmp_path / "bpd.json").read_text())["settings"]["seed"] == 1


def pipeline_and_checkpoints(tmp_path: Path) -> list[Path]:
    run = tmp_path / "run"
    return [run / "model_index.json", run / "unet", run / "scheduler", run / "checkpoint-1", run / "checkpoint-2"]


CASES = {
    # a new run over finished work
    "new-run-over-an-earlier-run": Case(
        copy_run, train("--max_train_steps", "1"),
        refused=lambda tmp_path: f"--output_dir {tmp_path / 'run'} holds the checkpoints checkpoint-1, checkpoint-2 "
        "and a saved pipeline of an earlier run; continue it with --resume_from_checkpoint latest, or pass "
        "--overwrite_output_dir to replace that run with a new one.",
    ),
    "overwrite-with-a-bad-argument-deletes-nothing": Case(
        copy_run, train("--overwrite_output_dir", "--model_config", "no-such-model"),
        refused=lambda tmp_path: "Unknown UNet config",
    ),
    "overwrite-output-dir": Case(
        copy_run, train("--overwrite_output_dir", "--max_train_steps", "1", "--checkpointing_steps", "1"),
        handled=overwritten_run,
    ),
    "sample-of-another-count": Case(
        earlier(sample("--num-images", "3")), sample("--num-images", "2"),
        refused=lambda tmp_path: f"{tmp_path / 'grid'} holds images made with other settings (num_images: 3 there, "
        "2 now); pass --overwrite to replace them, or give another --out.",
    ),
    "sample-overwrite-of-another-count": Case(
        earlier(sample("--num-images", "3")), sample("--num-images", "2", "--overwrite"),
        handled=sampled_two_without_stale_files,
        kept=lambda tmp_path: [tmp_path / "grid" / "000000.png", tmp_path / "grid" / "000001.png"],
    ),
    "bpd-report-of-other-settings": Case(
        earlier(bpd()), bpd("--seed", "1"),
        refused=lambda tmp_path: f"--output {tmp_path / 'bpd.json'} holds the report of an earlier run with other "
        "settings (seed: 0 there, 1 now); pass --overwrite to replace it, or give another --output.",
    ),
    "bpd-overwrite": Case(earlier(bpd()), bpd("--seed", "1", "--overwrite"), handled=replaced_report),
    # the final pipeline, saved atomically
    "full-disk-while-saving-the-pipeline": Case(
        copy_run, train("--max_train_steps", "3", "--checkpointing_steps", "1", "--resume_from_checkpoint", "latest"),
        refused=lambda tmp_path: f"Could not write the final outputs in {tmp_path / 'run'}: the disk is full. The "
        f"checkpoint {tmp_path / 'run' / 'checkpoint-3'} is intact",
        kept=pipeline_and_checkpoints,
    ),
    # checkpoint identity
    "latest-skips-a-renamed-checkpoint": Case(
        renamed_checkpoint,
        train("--max_train_steps", "2", "--checkpointing_steps", "1", "--resume_from_checkpoint", "latest"),
        handled=resumed_past_the_renamed_checkpoint,
        kept=lambda tmp_path: [tmp_path / "run" / "checkpoint-1", tmp_path / "run" / "checkpoint-5"],
    ),
}  # fmt: skip
FULL_DISK_AT = {"full-disk-while-saving-the-pipeline": "ddpm_plus.pipeline_ddpm_plus:DDPMPlusPipeline.save_pretrained"}


@pytest.mark.parametrize("name", list(CASES))
def test_fault_table(name, trained_run, models, tmp_path):
    case = CASES[name]
    case.prepare(tmp_path, trained_run, models)
    roots = case.kept(tmp_path) if case.kept is not None else [tmp_path] if case.refused is not None else []
    before = tree_hashes(*roots)
    command = case.command(tmp_path, models)
    if name in FULL_DISK_AT:
        result = run_with_full_disk(FULL_DISK_AT[name], *command, cwd=tmp_path)
    else:
        result = run_command(command, tmp_path)
    if case.refused is not None:
        assert_refused_without_change(result, case.refused(tmp_path), before, *roots)
    else:
        assert result.returncode == 0, result.stderr[-3000:]
        case.handled(tmp_path, result.stderr)
        assert tree_hashes(*roots) == before
    assert not list(tmp_path.glob("run/.pipeline.*"))  # no temporary pipeline left


def rename_checkpoint_2(run: Path) -> Path:
    return (run / "checkpoint-2").rename(run / "checkpoint-5")


def manifest_edit(edit: Callable[[dict], None]) -> Callable[[Path], Path]:
    def edited(run: Path) -> Path:
        edit_manifest(run / "checkpoint-2", edit)
        return run / "checkpoint-2"

    return edited


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (rename_checkpoint_2, "{path} is named for step 5 but holds step 2 (renamed or copied); it is not resumed from "
         "under another step's name."),
        (manifest_edit(lambda manifest: manifest.update(step=3)),
         "{path}/manifest.json records step 3, but training_state.json holds step 2."),
        (manifest_edit(lambda manifest: manifest["run"].update(seed=7)),
         "{path}/manifest.json records other run settings than training_state.json (seed: 7 there, 0 now)."),
    ],
    ids=["renamed", "manifest-of-another-step", "manifest-of-other-settings"],
)  # fmt: skip
def test_a_checkpoint_whose_identity_disagrees_is_refused_and_skipped_by_latest(fault, message, trained_run, tmp_path):
    """Renamed, or a manifest whose step or settings are not the checkpoint's: refused as a path, skipped by latest
    (the fault table runs the command with the renamed one)."""
    run = shutil.copytree(trained_run, tmp_path / "run")
    path = fault(run)
    reason = message.format(path=path)
    with pytest.raises(CheckpointError) as refused:
        resolve_resume_checkpoint(str(path), run)
    assert str(refused.value) == reason
    choice = resolve_resume_checkpoint("latest", run)
    assert choice.path == run / "checkpoint-1" and choice.rejected == [(path, reason)]


def test_latest_without_a_checkpoint_over_a_saved_pipeline_is_a_new_run_and_refused(trained_run, tmp_path):
    run = shutil.copytree(trained_run, tmp_path / "run")
    assert check_new_run(run, "latest", overwrite=False) is None  # it resumes
    for checkpoint in run.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    with pytest.raises(ValueError) as refused:
        check_new_run(run, "latest", overwrite=False)
    assert str(refused.value) == (
        f"--output_dir {run} holds a saved pipeline of an earlier run but no checkpoint to resume from; give another "
        "--output_dir, or pass --overwrite_output_dir instead of --resume_from_checkpoint to replace that run with a "
        "new one."
    )
