"""Measure how close converted improved-/guided-diffusion models come to the upstream code's own outputs.

    python bench/convert_parity.py

Converts the five random-weight models of tests/openai_fixtures/ (the upstream code computed their references, see
generate.py there) and prints, per model, the largest differences that tests/test_convert.py bounds: the network
output (relative to its largest magnitude), the time embedding at every timestep (likewise), the respaced samples
on the [0, 1] scale, and where the fixture has them, the KL terms and the decoder against calc_bpd_loop. The numbers
depend a little on the torch build and thread count (summation order); docs/converting.md quotes one run.
"""

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from openai_fixtures.weights import HERE, write_checkpoint  # noqa: E402

from ddpm_plus.cli_bpd import image_generators  # noqa: E402
from ddpm_plus.convert import from_openai  # noqa: E402


def largest_relative(actual: torch.Tensor, expected: np.ndarray) -> float:
    return float((actual.double() - torch.from_numpy(expected).double()).abs().max() / np.abs(expected).max())


def labels(arrays: dict[str, np.ndarray], key: str) -> dict[str, torch.Tensor]:
    return {"class_labels": torch.from_numpy(arrays[key])} if key in arrays else {}


def measure(name: str, entry: dict, folder: Path) -> str:
    pipe = from_openai(write_checkpoint(entry, folder / f"{name}.pt"), entry["flags"], source=entry["source"])
    pipe.set_progress_bar_config(disable=True)
    with np.load(HERE / f"{name}.npz") as file:
        arrays = dict(file)
    with torch.no_grad():
        output = pipe.unet(torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["t"]), **labels(arrays, "y")).sample
        timesteps = torch.arange(len(arrays["betas"]))
        embeddings = pipe.unet.time_embedding(pipe.unet.time_proj(timesteps).float())
    samples = pipe(
        batch_size=2,
        generator=torch.Generator().manual_seed(1234),
        timestep_respacing=entry["respacing"],
        output_type="pt",
        **labels(arrays, "sample_labels"),
    ).images
    expected_samples = (torch.from_numpy(arrays["samples"]) / 2 + 0.5).clamp(0, 1)
    line = (
        f"{name:20s} network {largest_relative(output, arrays['output']):.1e}  "
        f"embedding {largest_relative(embeddings, arrays['embeddings']):.1e}  "
        f"samples {float((samples - expected_samples).abs().max()):.1e}"
    )
    if "bpd_vb" in arrays:
        bound = pipe.log_likelihood(
            torch.from_numpy(arrays["bpd_images"]),
            generator=image_generators(0, range(len(arrays["bpd_images"]))),
            clip_denoised=True,
            **labels(arrays, "bpd_labels"),
        )
        kl = np.abs(bound.terms_bpd.numpy()[:, 1:] - arrays["bpd_vb"][:, 1:]).max()
        decoders = ", ".join(
            f"{ours:.3f} vs {theirs:.3f}"
            for ours, theirs in zip(bound.decoder_bpd.tolist(), arrays["bpd_vb"][:, 0], strict=True)
        )
        line += f"  KL terms {kl:.1e} bits/dim  decoder (exact vs upstream) {decoders}"
    return line


def main() -> None:
    torch.set_num_threads(1)
    manifest = json.loads((HERE / "manifest.json").read_text())
    with tempfile.TemporaryDirectory() as folder:
        for name, entry in manifest.items():
            if "respacing" in entry:
                print(measure(name, entry, Path(folder)))


if __name__ == "__main__":
    main()
