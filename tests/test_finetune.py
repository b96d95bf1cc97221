"""Fine-tuning with `--pretrained_model_name_or_path`: a plain diffusers DDPMPipeline folder, a Hub id (its download
replaced by a local folder), a folder written by `ddpm-plus convert`; conflicting model flags are refused."""

import json
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from helpers import TINY_UNET_CONFIG
from helpers.train_with_faults import run_train_script
from openai_fixtures.weights import HERE as OPENAI_FIXTURES
from openai_fixtures.weights import write_checkpoint
from safetensors.torch import load_file

from ddpm_plus import DDPMPlusPipeline
from ddpm_plus.convert import from_openai
from ddpm_plus.models import unet_config

T = 20
# The fast settings of the training tests, without the model flags (they come from the pretrained model).
FAST = [
    "--train_batch_size", "8", "--num_grid_images", "4", "--num_eval_images", "8", "--bpd_strata", "3",
    "--eval_batch_size", "64", "--save_images_steps", "0", "--bpd_steps", "0", "--checkpointing_steps", "0",
    "--report_to", "none", "--num_threads", "1", "--lr_warmup_steps", "1", "--num_inference_steps", "2",
]  # fmt: skip


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run(output_dir: Path, pretrained: str | Path, *extra: str) -> int:
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    argv = ["--output_dir", str(output_dir), "--pretrained_model_name_or_path", str(pretrained), *FAST, *extra]
    return run_train_script(argv)


@pytest.fixture(scope="module")
def plain_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain diffusers DDPMPipeline folder of the tests' tiny UNet, T = 20, random weights."""
    folder = tmp_path_factory.mktemp("pretrained") / "plain-ddpm"
    torch.manual_seed(0)
    unet = UNet2DModel.from_config(unet_config(TINY_UNET_CONFIG))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=T)).save_pretrained(folder)
    return folder


def unet_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


def test_fine_tuning_starts_from_the_pretrained_weights_and_scheduler(plain_folder: Path, tmp_path: Path) -> None:
    """With a vanishing learning rate the saved (EMA) UNet is the pretrained one, bit for bit; the scheduler, T and
    the variance type are the pretrained model's; the card and the settings say what was fine-tuned."""
    out = tmp_path / "run"
    assert run(out, plain_folder, "--max_train_steps", "1", "--learning_rate", "1e-30") == 0
    saved = unet_weights(out)
    assert saved.keys() == unet_weights(plain_folder).keys()
    assert all(torch.equal(saved[name], value) for name, value in unet_weights(plain_folder).items())
    pipe = DDPMPlusPipeline.from_pretrained(out)
    assert pipe.scheduler.config.num_train_timesteps == T and pipe.scheduler.config.variance_type == "fixed_small"
    card = (out / "README.md").read_text()
    assert f"| fine-tuned from | `{plain_folder}` |" in card


def test_fine_tuning_trains_resumes_and_saves(plain_folder: Path, tmp_path: Path) -> None:
    """Two steps at once, or one step, a checkpoint, and a resumed second step: the same weights, bitwise, and not
    the pretrained ones. A model flag given with the pretrained model's own value is accepted."""
    straight = tmp_path / "straight"
    assert run(straight, plain_folder, "--max_train_steps", "2", "--num_train_timesteps", str(T)) == 0
    resumed = tmp_path / "resumed"
    assert run(resumed, plain_folder, "--max_train_steps", "1", "--checkpointing_steps", "1") == 0
    assert run(resumed, plain_folder, "--max_train_steps", "2", "--resume_from_checkpoint", "latest") == 0
    final = unet_weights(resumed)
    assert all(torch.equal(final[name], value) for name, value in unet_weights(straight).items())
    assert any(not torch.equal(final[name], value) for name, value in unet_weights(plain_folder).items())


def test_a_hub_id_is_downloaded_without_code_and_recorded_as_the_base_model(
    plain_folder: Path, tmp_path: Path, monkeypatch
) -> None:
    """Only `snapshot_download` is replaced (by the local folder): configurations and safetensors are asked for."""
    import huggingface_hub

    requests = []

    def snapshot_download(repo_id, allow_patterns=None, **options):
        requests.append((repo_id, allow_patterns))
        return str(plain_folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    out = tmp_path / "run"
    assert run(out, "someone/tiny-ddpm", "--max_train_steps", "1") == 0
    assert requests and all(repo == "someone/tiny-ddpm" for repo, _ in requests)
    assert not any(pattern.endswith(".py") for _, patterns in requests for pattern in patterns)
    card = (out / "README.md").read_text()
    assert "base_model: someone/tiny-ddpm" in card and "| fine-tuned from | `someone/tiny-ddpm` |" in card


def test_a_converted_learned_variance_model_fine_tunes_with_the_hybrid_loss(tmp_path: Path) -> None:
    """A folder of `ddpm-plus convert` (improved-diffusion, learned σ, T = 100, rescaled timesteps) trains on."""
    entry = json.loads((OPENAI_FIXTURES / "manifest.json").read_text())["improved_cifar_like"]
    converted = from_openai(write_checkpoint(entry, tmp_path / "model.pt"), entry["flags"], source=entry["source"])
    converted.save_pretrained(tmp_path / "converted")
    out = tmp_path / "run"
    assert run(out, tmp_path / "converted", "--max_train_steps", "1", "--loss", "hybrid", "--num_eval_images", "2") == 0
    pipe = DDPMPlusPipeline.from_pretrained(out)
    assert pipe.scheduler.config.variance_type == "learned_range" and pipe.unet.config.time_embedding_type == "learned"
    assert (
        pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2" and pipe.scheduler.config.num_train_timesteps == 100
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--num_train_timesteps", "50"], "--num_train_timesteps 50 conflicts with"),
        (["--resolution", "32"], "--resolution 32 conflicts with"),
        (["--prediction_type", "v_prediction"], "--prediction_type v_prediction conflicts with"),
        (["--variance_type", "fixed_large"], "--variance_type fixed_large conflicts with"),
        (["--beta_schedule", "squaredcos_cap_v2"], "--beta_schedule squaredcos_cap_v2 conflicts with"),
        (["--learn_sigma"], "--learn_sigma True conflicts with"),
        (["--model_config", "digits-16"], "drop --model_config to fine-tune"),
    ],
)
def test_model_flags_that_conflict_with_the_pretrained_model_are_refused(
    extra, message, plain_folder: Path, tmp_path: Path, capsys
) -> None:
    capsys.readouterr()
    assert run(tmp_path / "run", plain_folder, *extra) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error and error.startswith("train.py: error: ")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


@pytest.mark.parametrize(
    ("pretrained", "message"),
    [
        ("./no-such-folder", "./no-such-folder: no such folder, and not a Hub id (owner/name)"),
        ("not-a-folder-here/../x", "not-a-folder-here/../x: no such folder, and not a Hub id"),
        ("{folder}/unet", "unet/unet/config.json is missing"),
    ],
)
def test_a_source_that_is_not_a_pipeline_is_refused(pretrained, message, plain_folder, tmp_path, capsys) -> None:
    capsys.readouterr()
    assert run(tmp_path / "run", pretrained.format(folder=plain_folder)) == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_the_pretrained_folder_is_never_the_output(plain_folder: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "model"
    import shutil

    shutil.copytree(plain_folder, copy)
    before = unet_weights(copy)
    capsys.readouterr()
    assert run(copy, copy, "--max_train_steps", "1") == 2
    assert "is the pretrained model's folder" in capsys.readouterr().err
    assert all(torch.equal(unet_weights(copy)[name], value) for name, value in before.items())
