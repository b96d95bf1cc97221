"""Model cards, Hub uploads and the community-pipeline export of `DDPMPlusPipeline`.

* `write_model_card(directory, ...)`: renders the model card (README.md with YAML metadata) of a directory written by
  `DDPMPlusPipeline.save_pretrained`, from the template `templates/ddpm_plus_model_card.md`, with the held-out
  bits/dim, the training settings and a sample grid when given.
* `push_saved_pipeline(directory, repo_id, ...)` / `push_pipeline_to_hub(pipeline, repo_id, ...)`: create the Hub
  repository and upload weights, configs, code files and the card. The token is only handed to `huggingface_hub`;
  it is never logged or written to a file, and setting names that look like secrets are left out of the card.
* `export_community_pipelines(directory)`: the folders diffusers loads with
  `DiffusionPipeline.from_pretrained(path, custom_pipeline=folder)` (`ddpm_plus`: `DDPMPlusPipeline`,
  `ddpm_plus_posterior`: `DDPMPlusPosteriorPipeline`), copied from the package's own source files.
  `python -m ddpm_plus.hub export-community --out pipelines` regenerates the shipped copies.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from safetensors import safe_open

from ddpm_plus.pipeline_ddpm_plus import DDPMPlusPipeline
from ddpm_plus.pipeline_ddpm_plus_posterior import DDPMPlusPosteriorPipeline

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo
    from PIL import Image

    from ddpm_plus.pipeline_ddpm_plus import DDPMPlusPipeline

logger = logging.getLogger(__name__)

MODEL_CARD_TEMPLATE = Path(__file__).parent / "templates" / "ddpm_plus_model_card.md"
SAMPLE_GRID_FILE = "sample_grid.png"
CARD_TAGS = ("ddpm_plus", "unconditional-image-generation", "diffusers", "ddpm", "diffusion")
COMMUNITY_PIPELINE_FILE = "pipeline.py"
# The community folders under pipelines/ and the pipeline class each one ships.
COMMUNITY_PIPELINES = {"ddpm_plus": DDPMPlusPipeline, "ddpm_plus_posterior": DDPMPlusPosteriorPipeline}
DEFAULT_COMMUNITY_DIRECTORY = Path("pipelines")

TrainingSettings = Mapping[str, Any] | Iterable[tuple[str, Any]] | argparse.Namespace
# Setting names left out of model cards: credentials must never reach a public file.
_SECRET_NAME = re.compile(r"token|secret|password|credential|api_?key", re.IGNORECASE)


# --------------------------------------------------------------------------------------------- model cards


def write_model_card(
    directory: str | Path,
    *,
    repo_id: str | None = None,
    bits_per_dim: float | None = None,
    bits_per_dim_standard_error: float | None = None,
    training_args: TrainingSettings | None = None,
    dataset_name: str | None = None,
    sample_grid: Image.Image | str | Path | None = None,
    license: str = "apache-2.0",
) -> ModelCard:
    """Write `README.md` (and `sample_grid.png`) into a saved pipeline directory and return the card.

    Args:
        directory: a directory written by `DDPMPlusPipeline.save_pretrained` (its configs and weights are read).
        repo_id: the Hub id used in the usage snippets (default: the directory's name).
        bits_per_dim: the held-out negative log-likelihood bound in bits/dim, if measured.
        bits_per_dim_standard_error: the standard error when `bits_per_dim` is an estimate
            (`ddpm_plus.likelihood.estimate_bound`); None when the sum over timesteps was exact.
        training_args: training settings (a mapping, (name, value) pairs or an `argparse.Namespace`); names that
            look like secrets (token, password, ...) are left out.
        dataset_name: the training data set.
        sample_grid: a PIL image or an image file of samples, stored as `sample_grid.png`.
        license: the license identifier for the metadata.
    """
    directory = Path(directory)
    repo_id = repo_id or directory.absolute().name
    if sample_grid is not None:
        _write_sample_grid(sample_grid, directory / SAMPLE_GRID_FILE)
    card = ModelCard.from_template(
        _card_data(repo_id, bits_per_dim, dataset_name, license),
        template_path=str(MODEL_CARD_TEMPLATE),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        bits_per_dim=bits_per_dim,
        bits_per_dim_standard_error=bits_per_dim_standard_error,
        dataset_name=dataset_name,
        sample_grid=SAMPLE_GRID_FILE if sample_grid is not None else None,
        training_args=public_settings(training_args),
        **_model_facts(directory),
    )
    card.save(directory / "README.md")
    return card


def public_settings(training_args: TrainingSettings | None) -> list[tuple[str, str]]:
    """Training settings as sorted (name, value) text pairs, without those whose names look like secrets."""
    if training_args is None:
        return []
    settings = vars(training_args) if isinstance(training_args, argparse.Namespace) else dict(training_args)
    return sorted((str(name), str(value)) for name, value in settings.items() if not _SECRET_NAME.search(str(name)))


def _card_data(repo_id: str, bits_per_dim: float | None, dataset_name: str | None, license: str) -> ModelCardData:
    eval_results = None
    if bits_per_dim is not None:
        eval_results = [
            EvalResult(
                task_type="unconditional-image-generation",
                dataset_type=dataset_name or "held-out",
                dataset_name=dataset_name or "held-out data",
                dataset_split="test",
                metric_type="bits_per_dim",
                metric_name="NLL bound (bits/dim)",
                metric_value=float(bits_per_dim),
            )
        ]
    return ModelCardData(
        library_name="diffusers",
        pipeline_tag="unconditional-image-generation",
        license=license,
        tags=list(CARD_TAGS),
        datasets=[dataset_name] if dataset_name else None,
        metrics=["bits_per_dim"] if bits_per_dim is not None else None,
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results,
    )


def _model_facts(directory: Path) -> dict[str, Any]:
    """What the card says about the network and the diffusion, read from the saved configs and weights."""
    unet_config = _read_json(directory / "unet" / "config.json")
    scheduler_config = _read_json(directory / "scheduler" / "scheduler_config.json")
    sample_size = unet_config["sample_size"]
    height, width = (sample_size, sample_size) if isinstance(sample_size, int) else sample_size
    return {
        "resolution": f"{height}x{width}",
        "channels": unet_config["in_channels"],
        "num_parameters": f"{_count_parameters(directory / 'unet'):,}",
        "num_train_timesteps": scheduler_config["num_train_timesteps"],
        "beta_schedule": scheduler_config["beta_schedule"],
        "prediction_type": scheduler_config["prediction_type"],
        "variance_type": scheduler_config["variance_type"],
    }


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{path} is missing: write the pipeline with `save_pretrained` before its model card.")
    return json.loads(path.read_text(encoding="utf-8"))


def _count_parameters(unet_directory: Path) -> int:
    """Number of weights in the safetensors files of a saved model (read from the headers only)."""
    files = sorted(unet_directory.glob("*.safetensors"))
    if not files:
        raise ValueError(f"No safetensors weights in {unet_directory}.")
    total = 0
    for file in files:
        with safe_open(file, framework="pt") as weights:
            for name in weights.keys():
                total += math.prod(weights.get_slice(name).get_shape())
    return total


def _write_sample_grid(sample_grid: Image.Image | str | Path, path: Path) -> None:
    if isinstance(sample_grid, (str, Path)):
        if Path(sample_grid).resolve() != path.resolve():
            shutil.copyfile(sample_grid, path)
    else:
        sample_grid.save(path, format="PNG")


# --------------------------------------------------------------------------------------------- Hub uploads


def push_saved_pipeline(
    directory: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    create_pr: bool = False,
    **model_card_kwargs: Any,
) -> CommitInfo:
    """Create the Hub repository `repo_id` and upload a saved pipeline directory to it.

    The model card is (re)written first when `model_card_kwargs` are given or the directory has no README.md, so a
    card written earlier with `write_model_card` (e.g. with the held-out bits/dim) is kept otherwise.

    Args:
        directory: a directory written by `DDPMPlusPipeline.save_pretrained`.
        repo_id: "user/name" of the model repository.
        token: a Hub token; only passed to `huggingface_hub`, never written or logged.
        private: create the repository as private.
        commit_message: the commit message (default: "Upload DDPMPlusPipeline").
        create_pr: open a pull request instead of committing to the main branch.
        model_card_kwargs: `write_model_card` arguments.
    """
    directory = Path(directory)
    if model_card_kwargs or not (directory / "README.md").is_file():
        write_model_card(directory, repo_id=repo_id, **model_card_kwargs)
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    logger.info("Uploading %s to the Hub repository %s", directory, repo_id)
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=directory,
        commit_message=commit_message or "Upload DDPMPlusPipeline",
        create_pr=create_pr,
    )


def push_pipeline_to_hub(
    pipeline: DDPMPlusPipeline,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    create_pr: bool = False,
    **model_card_kwargs: Any,
) -> CommitInfo:
    """Save `pipeline` to a temporary directory, write its model card and upload it (see `push_saved_pipeline`)."""
    with tempfile.TemporaryDirectory() as directory:
        pipeline.save_pretrained(directory)
        write_model_card(directory, repo_id=repo_id, **model_card_kwargs)
        return push_saved_pipeline(
            directory, repo_id, token=token, private=private, commit_message=commit_message, create_pr=create_pr
        )


# --------------------------------------------------------------------------------------------- community pipeline


def community_pipeline_files() -> dict[str, dict[str, Path]]:
    """For each community pipeline folder, its files and the package source files they are copied from.

    A folder holds what a saved directory of its pipeline class carries (`shipped_code_files`), with the class's own
    file named `pipeline.py`: diffusers loads `pipeline.py` from the folder given as `custom_pipeline` and resolves
    its relative imports (the base pipeline, the scheduler, the likelihood engine) next to it.
    """
    folders = {}
    for folder, pipeline_class in COMMUNITY_PIPELINES.items():
        files = pipeline_class.shipped_code_files()
        folders[folder] = {COMMUNITY_PIPELINE_FILE: files.pop(pipeline_class._code_file), **files}
    return folders


def export_community_pipelines(directory: str | Path = DEFAULT_COMMUNITY_DIRECTORY) -> list[Path]:
    """Write every community-pipeline folder into `directory` (created if missing); return the written paths."""
    written = []
    for folder, files in community_pipeline_files().items():
        target = Path(directory) / folder
        target.mkdir(parents=True, exist_ok=True)
        for name, source in files.items():
            shutil.copyfile(source, target / name)
            written.append(target / name)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ddpm_plus.hub export-community [--out DIR]`."""
    parser = argparse.ArgumentParser(prog="python -m ddpm_plus.hub", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export-community", help="write the community-pipeline folders")
    export.add_argument("--out", type=Path, default=DEFAULT_COMMUNITY_DIRECTORY, help="target directory")
    args = parser.parse_args(argv)
    for path in export_community_pipelines(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
