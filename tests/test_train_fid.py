"""`--eval_fid_every`: the FID during training, against the training images, with a small feature extractor built in
the tests; each value is checked against one recomputed here from the saved pipeline, the digits and the closed form
of the Fréchet distance. Needs the extra `[eval]` (marker `eval`, `nox -s eval`); the argument checks that come
before it are in test_train.py."""

import json
import logging
import math

import numpy as np
import pytest
import torch
from helpers.feature_extractors import TinyFeatures
from helpers.launch import run_script
from helpers.train_with_faults import TRAIN_SCRIPT
from test_fid import closed_form_frechet
from test_train import FAST, run_main

from ddpm_plus.data import digits_uint8
from ddpm_plus.pipeline_ddpm_plus import DDPMPlusPipeline

pytestmark = pytest.mark.eval

TINY = "helpers.feature_extractors:TinyFeatures"
NUM_SAMPLES, NUM_REFERENCE, STEPS, SEED, BATCH = 6, 20, 4, 3, 4
FID_ARGS = [
    "--fid_feature_extractor", TINY, "--fid_num_samples", str(NUM_SAMPLES), "--fid_num_reference",
    str(NUM_REFERENCE), "--num_inference_steps", str(STEPS), "--seed", str(SEED), "--eval_batch_size", str(BATCH),
]  # fmt: skip


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """The in-process runs set one torch thread (--num_threads 1): the recomputation here uses it too, then the
    test's setting comes back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def features_of(images: np.ndarray) -> np.ndarray:
    """TinyFeatures of uint8 images (N, H, W, C), in float64."""
    with torch.no_grad():
        features, _ = TinyFeatures()(torch.from_numpy(images).permute(0, 3, 1, 2))
    return features.double().numpy()


def expected_fid(run) -> float:
    """The FID of the run's final pipeline recomputed here in one thread: sample i from the noise of seed + i, in
    batches of BATCH consecutive images as the run makes them (so the network's arithmetic is the same), the first
    training digits as RGB (the tiny UNet is RGB), and the closed form of the Fréchet distance."""
    torch.set_num_threads(1)
    pipeline = DDPMPlusPipeline.from_pretrained(run)
    samples = [
        pipeline(
            batch_size=len(batch),
            generator=[torch.Generator().manual_seed(SEED + index) for index in batch],
            num_inference_steps=STEPS,
            output_type="np",
        ).images
        for batch in (range(start, min(start + BATCH, NUM_SAMPLES)) for start in range(0, NUM_SAMPLES, BATCH))
    ]
    sample_pixels = np.round(np.concatenate(samples) * 255).astype(np.uint8)
    digits = digits_uint8("train", resolution=16)[:NUM_REFERENCE]
    reference_pixels = np.repeat(digits[..., None], 3, axis=-1)
    samples_features, reference_features = features_of(sample_pixels), features_of(reference_pixels)
    return closed_form_frechet(
        samples_features.mean(0), np.cov(samples_features, rowvar=False),
        reference_features.mean(0), np.cov(reference_features, rowvar=False),
    )  # fmt: skip


def test_fid_during_training_is_logged_recorded_and_on_the_model_card(tmp_path, caplog):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    caplog.set_level(logging.INFO)
    out = tmp_path / "run"
    extra = ["--max_train_steps", "4", "--eval_fid_every", "2", "--report_to", "tensorboard", *FID_ARGS]
    assert run_main(out, *extra) == 0

    record = json.loads((out / "fid.json").read_text())
    assert record["step"] == 4 and record["num_samples"] == NUM_SAMPLES and record["num_inference_steps"] == STEPS
    assert record["num_reference_images"] == NUM_REFERENCE and record["feature_extractor"] == TINY
    assert record["fid"] == pytest.approx(expected_fid(out), rel=1e-5)

    events = EventAccumulator(str(out / "logs" / "ddpm_plus"))
    events.Reload()
    logged = events.Scalars("fid/training_data")
    assert [event.step for event in logged] == [2, 4]
    assert logged[-1].value == pytest.approx(record["fid"], rel=1e-6) and all(math.isfinite(e.value) for e in logged)

    card = (out / "README.md").read_text()
    assert f"FID of {NUM_SAMPLES} samples ({STEPS} sampling steps) against {NUM_REFERENCE}" in card
    assert f"**{record['fid']:.4f}**" in card and "name: FID (6 samples)" in card and "type: fid" in card

    reference = np.load(out / "fid_reference.npz")
    assert json.loads(str(reference["info"]))["count"] == NUM_REFERENCE
    assert "FID reference: 20 training images" in caplog.text
    assert f"step 4: FID {record['fid']:.4f} (6 samples of 4 steps against 20 training images)" in caplog.text


def test_the_reference_is_computed_once_and_reused_when_resuming(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "run"
    common = ["--eval_fid_every", "2", "--checkpointing_steps", "2", *FID_ARGS]
    assert run_main(out, "--max_train_steps", "2", *common) == 0
    assert "FID reference: 20 training images" in caplog.text
    saved = (out / "fid_reference.npz").read_bytes()
    first_sigma = np.load(out / "fid_reference.npz")["sigma"]

    caplog.clear()
    assert run_main(out, "--max_train_steps", "4", "--resume_from_checkpoint", "latest", *common) == 0
    assert "FID reference" not in caplog.text
    assert (out / "fid_reference.npz").read_bytes() == saved
    assert json.loads((out / "fid.json").read_text())["fid"] == pytest.approx(expected_fid(out), rel=1e-5)

    # a damaged file is computed again, not used
    (out / "fid_reference.npz").write_bytes(saved[:100])
    caplog.clear()
    with pytest.warns(UserWarning, match="cannot be read"):
        assert run_main(out, "--max_train_steps", "6", "--resume_from_checkpoint", "latest", *common) == 0
    assert "FID reference: 20 training images" in caplog.text
    assert np.array_equal(np.load(out / "fid_reference.npz")["sigma"], first_sigma)

    # other reference settings make new statistics
    fewer = [*common, "--fid_num_reference", "10"]
    caplog.clear()
    assert run_main(out, "--max_train_steps", "8", "--resume_from_checkpoint", "latest", *fewer) == 0
    assert "FID reference: 10 training images" in caplog.text
    assert json.loads(str(np.load(out / "fid_reference.npz")["info"]))["count"] == 10


def test_two_cpu_processes_share_the_fid_and_get_the_one_process_value(tmp_path):
    """Each process samples its share and computes the features of its share of the reference: the gathered FID is
    the one recomputed here in one process from the saved pipeline."""
    out = tmp_path / "run"
    args = ["--output_dir", str(out), *FAST, "--max_train_steps", "2", "--eval_fid_every", "2", *FID_ARGS]
    result = run_script(TRAIN_SCRIPT, *args, processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "fid.json").read_text())
    assert record["fid"] == pytest.approx(expected_fid(out), rel=1e-5)


def test_a_feature_extractor_that_cannot_be_loaded_is_one_line_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    capsys.readouterr()
    bad = ["--eval_fid_every", "1", "--max_train_steps", "2", "--fid_feature_extractor", "no_such_module:Net"]
    assert run_main(out, *bad) == 2
    stderr = capsys.readouterr().err.splitlines()
    assert stderr[-1] == "train.py: error: --fid_feature_extractor no_such_module:Net: No module named 'no_such_module'"
    assert not any(line.startswith("Traceback") for line in stderr) and not list(out.glob("checkpoint-*"))
