"""`ddpm-plus sample` at scale: the same files for any number of processes and (here) any batch size, the `.npz`
archive and the manifest, and resuming after an interruption (only what is missing or damaged is made again)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler
from helpers.launch import run_module
from PIL import Image
from pipeline_fixtures import SAMPLE_SIZE, SCHEDULER_CONFIG, tiny_unet

from ddpm_plus import DDPMPlusPipeline, DDPMPlusScheduler
from ddpm_plus.cli import main
from ddpm_plus.sharding import launched_processes

NUM_IMAGES = 7
ARCHIVE = f"samples_{NUM_IMAGES}x{SAMPLE_SIZE}x{SAMPLE_SIZE}x3.npz"


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("model") / "pipeline"
    DDPMPlusPipeline(tiny_unet(), DDPMPlusScheduler(**SCHEDULER_CONFIG)).save_pretrained(directory)
    return directory


def sample_argv(model: Path, out: Path, *extra: str) -> list[str]:
    """One torch thread per process, whatever the number of processes: the images are then equal bit for bit."""
    steps = ["--num-images", str(NUM_IMAGES), "--steps", "5", "--num-threads", "1"]
    return ["sample", "--model", str(model), *steps, "--out", str(out), *extra]


def output_bytes(out: Path) -> dict[str, bytes]:
    """Every file that a run wrote (the grid, the single images, the archive, the manifest), by name."""
    files = {out.name: out.read_bytes()}
    return files | {path.name: path.read_bytes() for path in sorted(out.with_suffix("").iterdir())}


@pytest.fixture(scope="module")
def reference_run(saved_pipeline, tmp_path_factory) -> dict[str, bytes]:
    """One uninterrupted run in this process (one torch thread, as the suite sets): batch size 3."""
    out = tmp_path_factory.mktemp("reference") / "grid.png"
    assert main(sample_argv(saved_pipeline, out, "--batch-size", "3")) == 0
    return output_bytes(out)


def test_two_cpu_processes_write_the_same_files_as_one(saved_pipeline, reference_run, tmp_path):
    out = tmp_path / "grid.png"
    result = run_module("ddpm_plus.cli", *sample_argv(saved_pipeline, out, "--batch-size", "3"), processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert output_bytes(out) == reference_run
    assert result.stdout.count("Wrote") == 1  # the main process writes the archive and the grid


def test_batch_size_does_not_change_the_images(saved_pipeline, reference_run, tmp_path):
    out = tmp_path / "grid.png"
    assert main(sample_argv(saved_pipeline, out, "--batch-size", "1")) == 0
    files = output_bytes(out)
    manifests = [json.loads(run.pop("manifest.json")) for run in (files, dict(reference_run))]
    assert files == {name: data for name, data in reference_run.items() if name != "manifest.json"}
    assert [manifest.pop("batch_size") for manifest in manifests] == [1, 3]
    assert manifests[0] == manifests[1]


def test_archive_holds_the_images_and_manifest_says_what_made_them(saved_pipeline, reference_run, tmp_path):
    archive = tmp_path / ARCHIVE
    archive.write_bytes(reference_run[ARCHIVE])
    with np.load(archive) as loaded:
        assert list(loaded) == ["arr_0"]
        images = loaded["arr_0"]
    assert images.dtype == np.uint8 and images.shape == (NUM_IMAGES, SAMPLE_SIZE, SAMPLE_SIZE, 3)
    for index, image in enumerate(images):
        (tmp_path / "single.png").write_bytes(reference_run[f"{index:06d}.png"])
        assert np.array_equal(np.asarray(Image.open(tmp_path / "single.png")), image)

    pipe = DDPMPlusPipeline.from_pretrained(saved_pipeline)
    pipe.set_progress_bar_config(disable=True)
    first = pipe(batch_size=1, generator=[torch.Generator().manual_seed(0)], num_inference_steps=5, output_type="np")
    assert np.array_equal(images[0], (first.images[0] * 255).round().astype(np.uint8))  # image 0: seed 0 + 0

    manifest = json.loads(reference_run["manifest.json"])
    assert manifest["model"] == str(saved_pipeline.resolve())
    assert manifest["scheduler"]["num_train_timesteps"] == SCHEDULER_CONFIG["num_train_timesteps"]
    assert (manifest["steps"], manifest["seed"], manifest["stochasticity"], manifest["dtype"]) == (
        5,
        0,
        None,
        "float32",
    )
    assert manifest["num_images"] == NUM_IMAGES and set(manifest["versions"]) == {"ddpm_plus", "diffusers", "torch"}


def test_a_rerun_makes_only_missing_or_damaged_images_and_the_same_bytes(saved_pipeline, reference_run, tmp_path):
    out = tmp_path / "grid.png"
    folder = tmp_path / "grid"
    assert main(sample_argv(saved_pipeline, out, "--batch-size", "3")) == 0
    (folder / "000001.png").unlink()  # chunk [0, 3)
    truncated = folder / "000004.png"  # chunk [3, 6)
    truncated.write_bytes(truncated.read_bytes()[:40])
    Image.new("RGB", (SAMPLE_SIZE + 1, SAMPLE_SIZE)).save(folder / "000006.png")  # chunk [6, 7): the wrong size
    (folder / ARCHIVE).unlink()
    (folder / ".000005.png.0123456789abcdef.tmp").write_bytes(b"a write that a kill cut short")

    assert main(sample_argv(saved_pipeline, out, "--batch-size", "3")) == 0
    assert output_bytes(out) == reference_run  # the unfinished write is gone too


def test_complete_chunks_are_not_made_again(saved_pipeline, tmp_path, monkeypatch):
    out = tmp_path / "grid.png"
    assert main(sample_argv(saved_pipeline, out, "--batch-size", "3")) == 0
    (tmp_path / "grid" / "000004.png").unlink()
    made = []
    original = DDPMPlusPipeline.__call__

    def recording_call(self, **kwargs):
        made.append(kwargs["batch_size"])
        return original(self, **kwargs)

    monkeypatch.setattr(DDPMPlusPipeline, "__call__", recording_call)
    assert main(sample_argv(saved_pipeline, out, "--batch-size", "3")) == 0
    assert made == [3]  # chunk [3, 6) only


def test_a_rerun_with_nothing_left_says_so_in_one_line(saved_pipeline, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(sample_argv(saved_pipeline, out)) == 0
    assert "Nothing to sample" not in capsys.readouterr().out
    assert main(sample_argv(saved_pipeline, out)) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "Nothing to sample" in line]
    assert lines == [f"Nothing to sample: the {NUM_IMAGES} images in {tmp_path / 'grid'}/ are complete."]


def test_a_folder_made_with_other_settings_is_refused(saved_pipeline, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(sample_argv(saved_pipeline, out, "--batch-size", "3")) == 0
    capsys.readouterr()
    assert main(sample_argv(saved_pipeline, out, "--seed", "1")) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "holds images made with other settings (seed: 0 there, 1 now)" in error


@pytest.mark.parametrize("device", [["--device", "cpu"], []])  # given, or the default on a machine without a GPU
def test_half_precision_on_cpu_is_one_line_before_the_model_loads(device, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = tmp_path / "no-such-model"
    model.mkdir()  # a folder that is no pipeline: the model would be refused when loaded
    for dtype in ("float16", "bfloat16"):
        status = main(sample_argv(model, tmp_path / "grid.png", "--dtype", dtype, *device))
        error = capsys.readouterr().err
        assert status == 2 and error.count("\n") == 1 and f"--dtype {dtype} needs a GPU" in error, error
    assert not (tmp_path / "grid").exists()


def test_device_and_threads_mean_the_same_in_sample_bpd_and_fid():
    """--device defaults to cuda when available, else cpu, and --num-threads to the cores per local process, in
    every sub-command."""
    from ddpm_plus.cli import build_parser
    from ddpm_plus.sharding import default_device
    from ddpm_plus.training.launch import torch_threads_per_process

    commands = (["sample", "--model", "m", "--out", "g.png"], ["bpd", "--model", "m"], ["fid", "--samples", "a"])
    for argv in commands:
        args = build_parser().parse_args([*argv, "--reference", "b"] if argv[0] == "fid" else argv)
        assert args.device is None and args.num_threads is None
    assert default_device(None) == ("cuda" if torch.cuda.is_available() else "cpu") and default_device("cpu") == "cpu"
    threads = torch.get_num_threads()
    try:
        for requested in (1, None):
            with launched_processes(cpu=True, num_threads=requested):
                assert torch.get_num_threads() == torch_threads_per_process(requested)
    finally:
        torch.set_num_threads(threads)


def test_stochasticity_reaches_the_scheduler(saved_pipeline, tmp_path):
    out = tmp_path / "grid.png"
    assert main(sample_argv(saved_pipeline, out, "--stochasticity", "0", "--num-images", "2")) == 0
    pipe = DDPMPlusPipeline.from_pretrained(saved_pipeline)
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(seed) for seed in (0, 1)]
    expected = pipe(batch_size=2, generator=generators, num_inference_steps=5, stochasticity=0.0).images
    for index, image in enumerate(expected):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "grid" / f"{index:06d}.png")), np.asarray(image))
    assert json.loads((tmp_path / "grid" / "manifest.json").read_text())["stochasticity"] == 0.0


def test_plain_diffusers_ddpm_pipeline_folders_are_sampled(tmp_path):
    DDPMPipeline(tiny_unet(), DDPMScheduler(**SCHEDULER_CONFIG)).save_pretrained(tmp_path / "ddpm")
    out = tmp_path / "grid.png"
    assert (
        main(["sample", "--model", str(tmp_path / "ddpm"), "--num-images", "2", "--steps", "3", "--out", str(out)]) == 0
    )
    assert sorted(os.listdir(tmp_path / "grid")) == ["000000.png", "000001.png", "manifest.json", "samples_2x8x8x3.npz"]


def test_a_hub_id_gives_the_images_of_its_folder(saved_pipeline, reference_run, tmp_path, monkeypatch):
    """Only the Hub download is replaced (by the saved folder); the manifest names the Hub id."""
    import huggingface_hub

    downloads = []
    monkeypatch.setattr(
        huggingface_hub,
        "snapshot_download",
        lambda repo_id, **options: downloads.append(repo_id) or str(saved_pipeline),
    )
    out = tmp_path / "grid.png"
    assert main(sample_argv("someone/ddpm-tiny", out, "--batch-size", "3")) == 0
    files = output_bytes(out)
    manifest = json.loads(files.pop("manifest.json"))
    assert downloads == ["someone/ddpm-tiny"] and manifest["model"] == "someone/ddpm-tiny"
    assert files == {name: data for name, data in reference_run.items() if name != "manifest.json"}
