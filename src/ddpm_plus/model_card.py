"""Model cards of saved DDPM+ pipeline directories.

`write_model_card(directory, ...)` renders the model card (README.md with YAML metadata) of a directory written by
`DDPMPlusPipeline.save_pretrained`, from the template `templates/ddpm_plus_model_card.md`, with the held-out
bits/dim, the FID, the training settings, a sample grid and the figure of the bound (`ddpm_plus.plots`) when
given. Setting names that look like secrets (token, password, ...) are left out of the card.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors import safe_open

from ddpm_plus.pipeline_ddpm_plus import image_size
from ddpm_plus.utils import Settings, atomic_path, public_settings

if TYPE_CHECKING:
    from PIL import Image

MODEL_CARD_TEMPLATE = Path(__file__).parent / "templates" / "ddpm_plus_model_card.md"
SAMPLE_GRID_FILE = "sample_grid.png"
BOUND_FIGURE_FILE = "bound.png"
CARD_TAGS = ("ddpm_plus", "unconditional-image-generation", "diffusers", "ddpm", "diffusion")


def write_model_card(
    directory: str | Path,
    *,
    repo_id: str | None = None,
    bits_per_dim: float | None = None,
    bits_per_dim_standard_error: float | None = None,
    training_args: Settings | None = None,
    dataset_name: str | None = None,
    sample_grid: Image.Image | str | Path | None = None,
    bound_figure: Image.Image | str | Path | None = None,
    fid: Mapping[str, Any] | None = None,
    license: str = "apache-2.0",
    conversion: Mapping[str, Any] | None = None,
    base_model: str | None = None,
) -> ModelCard:
    """Write `README.md` (atomically) and `sample_grid.png`, `bound.png` into a saved pipeline directory and return
    the card.

    Args:
        directory: a directory written by `DDPMPlusPipeline.save_pretrained` (its configs and weights are read).
        repo_id: what the usage snippets load: the Hub id the folder is pushed to (default: the directory's path as
            given, so that the snippet of a local folder loads that folder).
        bits_per_dim: the held-out negative log-likelihood bound in bits/dim, if measured.
        bits_per_dim_standard_error: the standard error when `bits_per_dim` is an estimate
            (`ddpm_plus.bound_estimation.estimate_bound`); None when the sum over timesteps was exact.
        training_args: training settings (a mapping, (name, value) pairs or an `argparse.Namespace`); names that
            look like secrets (token, password, ...) are left out.
        dataset_name: the training data set.
        sample_grid: a PIL image or an image file of samples, stored as `sample_grid.png` (a file already in
            `directory`, such as training's `samples.png`, is shown as it is).
        bound_figure: a PIL image or an image file of the bound's figure (`ddpm_plus.plots.save_bound_figure`: the
            terms per timestep and the rate-distortion curve), stored as `bound.png` (likewise).
        fid: the FID of samples against the training images, as training's `fid.json` records it: "fid",
            "num_samples", "num_inference_steps", "num_reference_images" and "feature_extractor".
        license: the license identifier for the metadata.
        conversion: for a converted checkpoint (`ddpm_plus.convert`): its "source", "flags", "checkpoint_sha256"
            and "timestep_respacing" (the upstream sampling steps, used in the usage snippet; may be None).
        base_model: what a fine-tuned model started from (a folder or a Hub id; a Hub id also goes into the
            metadata's `base_model`).
    """
    directory = Path(directory)
    repo_id = repo_id or str(directory)
    grid_file = None if sample_grid is None else _card_image(sample_grid, directory, SAMPLE_GRID_FILE)
    figure_file = None if bound_figure is None else _card_image(bound_figure, directory, BOUND_FIGURE_FILE)
    card = ModelCard.from_template(
        _card_data(repo_id, bits_per_dim, fid, dataset_name, license, base_model),
        template_path=str(MODEL_CARD_TEMPLATE),
        model_name=Path(repo_id).name,
        repo_id=repo_id,
        bits_per_dim=bits_per_dim,
        bits_per_dim_standard_error=bits_per_dim_standard_error,
        dataset_name=dataset_name,
        sample_grid=grid_file,
        bound_figure=figure_file,
        fid=fid,
        training_args=sorted((name, str(value)) for name, value in public_settings(training_args).items()),
        conversion=conversion,
        base_model=base_model,
        **_model_facts(directory, (conversion or {}).get("timestep_respacing")),
    )
    with atomic_path(directory / "README.md") as temporary:
        card.save(temporary)
    return card


def _card_data(
    repo_id: str,
    bits_per_dim: float | None,
    fid: Mapping[str, Any] | None,
    dataset_name: str | None,
    license: str,
    base_model: str | None = None,
) -> ModelCardData:
    """The YAML metadata: the bits/dim on held-out data and the FID against the training data as eval results."""
    measured = []  # (metric type, name, value, split)
    if bits_per_dim is not None:
        measured.append(("bits_per_dim", "NLL bound (bits/dim)", float(bits_per_dim), "test"))
    if fid is not None:
        measured.append(("fid", f"FID ({fid['num_samples']} samples)", float(fid["fid"]), "train"))
    eval_results = [
        EvalResult(
            task_type="unconditional-image-generation",
            dataset_type=dataset_name or "held-out",
            dataset_name=dataset_name or "held-out data",
            dataset_split=split,
            metric_type=metric_type,
            metric_name=name,
            metric_value=value,
        )
        for metric_type, name, value, split in measured
    ]
    return ModelCardData(
        library_name="diffusers",
        pipeline_tag="unconditional-image-generation",
        license=license,
        tags=list(CARD_TAGS),
        datasets=[dataset_name] if dataset_name else None,
        metrics=[metric_type for metric_type, *_ in measured] or None,
        model_name=Path(repo_id).name,
        eval_results=eval_results or None,
        base_model=None if base_model is None or Path(base_model).is_dir() else base_model,
    )


def _model_facts(directory: Path, timestep_respacing: str | None) -> dict[str, Any]:
    """What the card says about the network and the diffusion, read from the saved configs and weights, and the
    arguments of the usage snippet (the sampling steps, a class label for a class-conditional model)."""
    unet_config = _read_json(directory / "unet" / "config.json")
    scheduler_config = _read_json(directory / "scheduler" / "scheduler_config.json")
    height, width = image_size(unet_config["sample_size"])
    num_classes = unet_config.get("num_class_embeds")
    steps = (
        f"timestep_respacing={timestep_respacing!r}"
        if timestep_respacing
        else f"num_inference_steps={scheduler_config['num_train_timesteps']}"
    )
    labels = ", class_labels=0" if num_classes else ""
    return {
        "num_classes": num_classes,
        "sampling_arguments": steps + labels,
        "likelihood_arguments": labels,
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


def _card_image(image: Image.Image | str | Path, directory: Path, name: str) -> str:
    """The file name, inside `directory`, of an image the card shows: an image file already in `directory` as it
    is (no second copy), else the image saved (a PIL image) or copied (a file) as `name`."""
    if isinstance(image, (str, Path)):
        if Path(image).resolve().parent == directory.resolve():
            return Path(image).name
        shutil.copyfile(image, directory / name)
    else:
        image.save(directory / name, format="PNG")
    return name
