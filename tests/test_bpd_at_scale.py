"""`ddpm-plus bpd` at scale: two processes write the 1-process report (exact bound and estimate), and a run that was
interrupted resumes from its per-chunk partial results to the same report."""

import json
from pathlib import Path

import pytest
from helpers.launch import run_module
from pipeline_fixtures import SCHEDULER_CONFIG, tiny_unet

from ddpm_plus import DDPMPlusPipeline, DDPMPlusScheduler, cli_bpd
from ddpm_plus.cli import main

EXACT = ("--num-timesteps", "full", "--batch-size", "40")  # T = 20: chunks of 2 images
ESTIMATE = ("--num-timesteps", "5", "--batch-size", "10", "--pilot-images", "2", "--pilot-timesteps", "4")
ODE = ("--method", "ode", "--batch-size", "4", "--draws", "2", "--rtol", "1e-3", "--atol", "1e-3")  # 2 images a solve


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("model") / "pipeline"
    DDPMPlusPipeline(tiny_unet(channels=1), DDPMPlusScheduler(**SCHEDULER_CONFIG)).save_pretrained(directory)
    return directory


def bpd_argv(model: Path, output: Path, *mode: str) -> list[str]:
    data = ["--data", "digits", "--split", "test", "--max-images", "5", "--seed", "3"]
    # one torch thread per process, whatever the number of processes: the reports are then equal bit for bit
    return ["bpd", "--model", str(model), *data, "--output", str(output), "--num-threads", "1", *mode]


def report_without_time(path: Path) -> dict:
    """The JSON report as written, less the wall time (the only value that differs between equal runs)."""
    report = json.loads(path.read_text())
    report["summary"].pop("seconds")
    return report


@pytest.mark.parametrize("mode", [EXACT, ESTIMATE, ODE], ids=["exact", "estimate", "ode"])
def test_two_cpu_processes_write_the_one_process_report(saved_pipeline, tmp_path, mode):
    output = tmp_path / "bpd.json"
    assert main(bpd_argv(saved_pipeline, output, *mode)) == 0
    one_process = report_without_time(output)
    output.unlink()
    result = run_module("ddpm_plus.cli", *bpd_argv(saved_pipeline, output, *mode), processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert report_without_time(output) == one_process
    assert len(one_process["images"]) == 5 and result.stdout.count("wrote") == 1
    assert not cli_bpd.partial_results(output).exists()


def test_an_interrupted_run_resumes_from_its_partial_results(saved_pipeline, tmp_path, monkeypatch):
    output = tmp_path / "bpd.json"
    assert main(bpd_argv(saved_pipeline, output, *EXACT)) == 0
    straight = report_without_time(output)
    output.unlink()

    calls = []
    real_bound = cli_bpd.variational_bound

    def interrupted_at_the_third_chunk(*args, **kwargs):
        calls.append(len(args[1]))
        if len(calls) == 3 and interrupt:
            raise KeyboardInterrupt  # as a kill would stop the run
        return real_bound(*args, **kwargs)

    monkeypatch.setattr(cli_bpd, "variational_bound", interrupted_at_the_third_chunk)
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        main(bpd_argv(saved_pipeline, output, *EXACT))
    partial = cli_bpd.partial_results(output)
    assert len(list(partial.glob("chunk-*.safetensors"))) == 2 and not output.exists()

    calls.clear()
    interrupt = False
    assert main(bpd_argv(saved_pipeline, output, *EXACT)) == 0
    assert calls == [1]  # only the last chunk, image 4
    assert report_without_time(output) == straight
    assert not partial.exists()


def test_an_interrupted_ode_run_resumes_from_its_partial_results(saved_pipeline, tmp_path, monkeypatch):
    output, figure = tmp_path / "bpd.json", tmp_path / "ode.png"
    assert main([*bpd_argv(saved_pipeline, output, *ODE), "--plot", str(figure)]) == 0
    straight = report_without_time(output)
    assert straight["settings"].pop("plot") == str(figure) and figure.stat().st_size > 0
    assert straight["summary"]["num_draws"] == 2 and straight["summary"]["standard_error_over_draws"] > 0
    assert straight["settings"]["divergence"] == "rademacher" and "num_timesteps" not in straight["settings"]
    output.unlink()

    calls = []
    real_likelihood = cli_bpd.ode_likelihood

    def interrupted_at_the_second_chunk(*args, **kwargs):
        calls.append(len(args[1]))
        if len(calls) == 2 and interrupt:
            raise KeyboardInterrupt
        return real_likelihood(*args, **kwargs)

    monkeypatch.setattr(cli_bpd, "ode_likelihood", interrupted_at_the_second_chunk)
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        main(bpd_argv(saved_pipeline, output, *ODE))
    calls.clear()
    interrupt = False
    assert main(bpd_argv(saved_pipeline, output, *ODE)) == 0
    assert calls == [2, 1]  # images 2-3 and 4: the first chunk was kept
    resumed = report_without_time(output)
    assert resumed["settings"].pop("plot") is None and resumed == straight


def test_partial_results_of_other_settings_are_refused(saved_pipeline, tmp_path, capsys, monkeypatch):
    output = tmp_path / "bpd.json"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_bpd, "variational_bound", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(bpd_argv(saved_pipeline, output, *EXACT))
    monkeypatch.undo()
    capsys.readouterr()
    assert main([*bpd_argv(saved_pipeline, output, *EXACT), "--seed", "4"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "holds partial results of other settings" in error


def test_plain_diffusers_folders_and_hub_ids_give_the_report_of_the_saved_pipeline(
    saved_pipeline, tmp_path, monkeypatch
):
    """The model loads as `ddpm-plus sample` loads it: a plain `DDPMPipeline` folder (DDPMScheduler) and a Hub id
    (the download stands in by a local copy: only `snapshot_download` is replaced) give the same numbers."""
    import huggingface_hub
    from diffusers import DDPMPipeline, DDPMScheduler

    saved = DDPMPlusPipeline.from_pretrained(saved_pipeline)
    plain = tmp_path / "plain"
    DDPMPipeline(saved.unet, DDPMScheduler(**SCHEDULER_CONFIG)).save_pretrained(plain)
    downloads = []
    monkeypatch.setattr(
        huggingface_hub, "snapshot_download", lambda repo_id, **options: downloads.append(repo_id) or str(plain)
    )
    reports = []
    for model in (saved_pipeline, plain, "someone/ddpm-tiny"):
        output = tmp_path / f"bpd-{len(reports)}.json"
        assert main(bpd_argv(model, output, *EXACT)) == 0
        report = report_without_time(output)
        assert report["settings"].pop("model") == str(model) and report["settings"].pop("output") == str(output)
        reports.append(report)
    assert reports[0] == reports[1] == reports[2] and downloads == ["someone/ddpm-tiny"]


def test_a_folder_that_is_not_a_saved_pipeline_is_one_line(tmp_path, capsys):
    (tmp_path / "model" / "unet").mkdir(parents=True)
    assert main(bpd_argv(tmp_path / "model", tmp_path / "bpd.json", *EXACT)) == 2
    assert main(["sample", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "grid.png")]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors == [
        f"ddpm-plus bpd: error: --model {tmp_path / 'model'} is not a saved pipeline folder: it has neither "
        "model_index.json nor unet/ and scheduler/ subfolders.",
        f"ddpm-plus sample: error: --model {tmp_path / 'model'}: {tmp_path / 'model' / 'model_index.json'} is missing.",
    ]
