"""DDPMPlusScheduler against diffusers' DDPMScheduler, run side by side: bitwise-identical results."""

import inspect
import itertools
import json
import logging

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler
from diffusers.utils import logging as diffusers_logging

from ddpm_plus import DDPMPlusScheduler

BIT_VIEWS = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}


def assert_bitwise_equal(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Same shape, dtype and bit pattern (NaN-aware: NaNs must match bit for bit too)."""
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    view = BIT_VIEWS[ours.dtype]
    assert torch.equal(ours.contiguous().view(view), theirs.contiguous().view(view))


def deterministic_sample(flip: bool = False) -> torch.Tensor:
    """diffusers' `dummy_sample_deter` / `dummy_noise_deter` (4x3x8x8)."""
    num_elems = 4 * 3 * 8 * 8
    values = torch.arange(num_elems)
    if flip:
        values = values.flip(-1)
    return (values.reshape(3, 8, 8, 4) / num_elems).permute(3, 0, 1, 2)


def dummy_model(sample: torch.Tensor, t) -> torch.Tensor:
    """diffusers' scheduler-test dummy model: sample * t / (t + 1)."""
    if isinstance(t, torch.Tensor):
        t = t.reshape(-1, *(1,) * (sample.ndim - 1)).to(sample.device).to(sample.dtype)
    return sample * t / (t + 1)


def learned_model(sample: torch.Tensor, t) -> torch.Tensor:
    """A dummy model with doubled output channels; the extra channels span negative and positive values."""
    return torch.cat([dummy_model(sample, t), torch.tanh(3 * sample - 1.0)], dim=1)


def run_both(
    config: dict,
    *,
    steps: int | None = 10,
    timesteps=None,
    dtype=torch.float32,
    generators="single",
    model=dummy_model,
    batch: int = 4,
):
    """Run the same sampling loop with both schedulers; compare every step's outputs bitwise."""
    outputs = []
    for scheduler_class in (DDPMScheduler, DDPMPlusScheduler):
        scheduler = scheduler_class(**config)
        if timesteps is not None:
            scheduler.set_timesteps(timesteps=timesteps)
        elif steps is not None:
            scheduler.set_timesteps(steps)
        sample = deterministic_sample()[:batch].to(dtype)
        if generators == "single":
            generator = torch.Generator().manual_seed(0)
        elif generators == "list":
            generator = [torch.Generator().manual_seed(i) for i in range(batch)]
        else:
            torch.manual_seed(0)
            generator = None
        trace = []
        for t in scheduler.timesteps:
            out = scheduler.step(model(sample, t), t, sample, generator=generator)
            trace += [out.prev_sample, out.pred_original_sample]
            sample = out.prev_sample
        # the next draw shows that both consumed the same number of random numbers
        if isinstance(generator, list):
            trace.append(torch.stack([torch.randn(3, generator=g) for g in generator]))
        else:
            trace.append(torch.randn(3, generator=generator))
        outputs.append(trace)
    assert len(outputs[0]) == len(outputs[1])
    for ours, theirs in zip(outputs[1], outputs[0], strict=True):
        assert_bitwise_equal(ours, theirs)
    return outputs[1]


@pytest.mark.parametrize(
    "prediction_type,variance_type,mode",
    list(
        itertools.product(
            ["epsilon", "sample", "v_prediction"],
            ["fixed_small", "fixed_small_log", "fixed_large", "learned_range"],
            ["clip", "no_clip", "threshold"],
        )
    ),
)
def test_step_loop_bitwise(prediction_type, variance_type, mode):
    config = {
        "prediction_type": prediction_type,
        "variance_type": variance_type,
        "clip_sample": mode == "clip",
        "thresholding": mode == "threshold",
        "sample_max_value": 1.5,
    }
    model = learned_model if variance_type == "learned_range" else dummy_model
    trace = run_both(config, steps=25, model=model)
    assert all(torch.isfinite(x).all() for x in trace)


@pytest.mark.parametrize(
    "schedule",
    [
        {"beta_schedule": "linear"},
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"beta_schedule": "sigmoid"},
        {"beta_schedule": "laplace"},
        {"trained_betas": np.linspace(1e-4, 0.03, 1000).tolist()},
        {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
        {"rescale_betas_zero_snr": True, "beta_schedule": "scaled_linear", "prediction_type": "v_prediction"},
    ],
)
def test_beta_schedules_bitwise(schedule):
    ours, theirs = DDPMPlusScheduler(**schedule), DDPMScheduler(**schedule)
    for name in ("betas", "alphas", "alphas_cumprod", "one"):
        assert_bitwise_equal(getattr(ours, name), getattr(theirs, name))
    run_both(schedule, steps=20)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", [1, 7, 50, 999, 1000])
@pytest.mark.parametrize("steps_offset", [0, 1])
def test_spacings_and_step_counts(spacing, steps, steps_offset):
    config = {"timestep_spacing": spacing, "steps_offset": steps_offset}
    ours, theirs = DDPMPlusScheduler(**config), DDPMScheduler(**config)
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    assert torch.equal(ours.timesteps, theirs.timesteps) and ours.timesteps.dtype == theirs.timesteps.dtype
    for t in ours.timesteps[:5].tolist() + ours.timesteps[-5:].tolist():
        assert int(ours.previous_timestep(t)) == int(theirs.previous_timestep(t))
    if steps <= 50:
        run_both(config, steps=steps)


def test_custom_timesteps_bitwise():
    run_both({}, timesteps=[999, 800, 500, 123, 50, 1, 0])
    run_both({"variance_type": "fixed_large"}, timesteps=[700, 3, 2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_small_log", "fixed_large", "learned_range"])
def test_dtypes_bitwise(dtype, variance_type):
    model = learned_model if variance_type == "learned_range" else dummy_model
    trace = run_both({"variance_type": variance_type}, steps=10, dtype=dtype, model=model)
    assert trace[0].dtype == dtype


@pytest.mark.parametrize("generators", ["single", "list", "none"])
def test_generators_bitwise(generators):
    run_both({"variance_type": "fixed_large"}, steps=10, generators=generators)


def test_full_training_chain_loop_bitwise():
    run_both({}, steps=None)


def test_published_diffusers_full_loop_numbers():
    """diffusers' own DDPM scheduler tests: full loop sums 258.9606 / 202.0296 (v) / 387.9466 (with noise)."""
    for config, expected_sum, expected_mean in [
        ({}, 258.9606, 0.3372),
        ({"prediction_type": "v_prediction"}, 202.0296, 0.2631),
    ]:
        scheduler = DDPMPlusScheduler(**config)
        sample, generator = deterministic_sample(), torch.manual_seed(0)
        for t in reversed(range(len(scheduler))):
            sample = scheduler.step(dummy_model(sample, t), t, sample, generator=generator).prev_sample
        assert abs(sample.abs().sum().item() - expected_sum) < 1e-2
        assert abs(sample.abs().mean().item() - expected_mean) < 1e-3

    scheduler = DDPMPlusScheduler()
    sample, generator = deterministic_sample(), torch.manual_seed(0)
    timesteps = scheduler.timesteps[len(scheduler) - 2 :]
    sample = scheduler.add_noise(sample, deterministic_sample(flip=True), timesteps[:1])
    for t in timesteps:
        sample = scheduler.step(dummy_model(sample, t), t, sample, generator=generator).prev_sample
    assert abs(sample.abs().sum().item() - 387.9466) < 1e-2
    assert abs(sample.abs().mean().item() - 0.5051) < 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_add_noise_and_velocity_bitwise(dtype):
    ours, theirs = DDPMPlusScheduler(), DDPMScheduler()
    x0 = deterministic_sample().to(dtype)
    noise = deterministic_sample(flip=True).to(dtype)
    t = torch.tensor([0, 17, 500, 999])
    assert_bitwise_equal(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t))
    assert_bitwise_equal(ours.get_velocity(x0, noise, t), theirs.get_velocity(x0, noise, t))


def test_config_keys_defaults_and_order_match():
    ours, theirs = DDPMPlusScheduler(), DDPMScheduler()
    assert list(ours.config.keys()) == list(theirs.config.keys())
    assert len([k for k in theirs.config if not k.startswith("_")]) == 15
    assert {k: v for k, v in ours.config.items() if k != "_class_name"} == {
        k: v for k, v in theirs.config.items() if k != "_class_name"
    }
    ours_params = list(inspect.signature(DDPMPlusScheduler.__init__).parameters.values())
    theirs_params = list(inspect.signature(DDPMScheduler.__init__).parameters.values())
    assert [(p.name, p.default) for p in ours_params] == [(p.name, p.default) for p in theirs_params]


def test_class_attributes_match():
    ours, theirs = DDPMPlusScheduler(num_train_timesteps=50), DDPMScheduler(num_train_timesteps=50)
    assert DDPMPlusScheduler._compatibles == DDPMScheduler._compatibles
    assert ours.order == theirs.order == 1
    assert ours.init_noise_sigma == theirs.init_noise_sigma
    assert len(ours) == len(theirs) == 50
    x = torch.randn(2, 3, 4, 4)
    assert ours.scale_model_input(x, 3) is x
    assert torch.equal(ours.timesteps, theirs.timesteps)


def test_set_timesteps_device_argument():
    scheduler = DDPMPlusScheduler()
    scheduler.set_timesteps(10, device="cpu")
    assert scheduler.timesteps.device.type == "cpu"


@pytest.mark.parametrize(
    "kwargs,config",
    [
        ({"num_inference_steps": 1001}, {}),
        ({"timesteps": [1, 5]}, {}),
        ({"timesteps": [1000, 5]}, {}),
        ({"num_inference_steps": 5, "timesteps": [5, 1]}, {}),
        ({"num_inference_steps": 5}, {"timestep_spacing": "sideways"}),
    ],
)
def test_set_timesteps_errors_identical(kwargs, config):
    errors = []
    for scheduler_class in (DDPMScheduler, DDPMPlusScheduler):
        with pytest.raises(ValueError) as info:
            scheduler_class(**config).set_timesteps(**kwargs)
        errors.append(str(info.value))
    assert errors[0] == errors[1]


def test_config_read_at_call_time():
    """Stable Diffusion pipelines rewrite steps_offset/clip_sample in the internal config after construction."""
    from diffusers.configuration_utils import FrozenDict

    schedulers = [DDPMScheduler(), DDPMPlusScheduler()]
    for scheduler in schedulers:
        new_config = dict(scheduler.config)
        new_config.update(steps_offset=1, clip_sample=False)
        scheduler._internal_dict = FrozenDict(new_config)
        scheduler.set_timesteps(10)
    assert schedulers[1].timesteps[-1] == 1
    assert torch.equal(schedulers[0].timesteps, schedulers[1].timesteps)
    sample = deterministic_sample() * 40  # far outside [-1, 1]: clipping would change x̂_0
    outs = [
        s.step(dummy_model(sample, 901), 901, sample, generator=torch.Generator().manual_seed(0)) for s in schedulers
    ]
    assert_bitwise_equal(outs[1].prev_sample, outs[0].prev_sample)
    assert outs[1].pred_original_sample.abs().max() > 1


def test_return_dict_false_tuple():
    scheduler = DDPMPlusScheduler()
    scheduler.set_timesteps(5)
    sample = deterministic_sample()
    prev, x0 = scheduler.step(dummy_model(sample, 0), 0, sample, return_dict=False)
    reference = DDPMScheduler()
    reference.set_timesteps(5)
    expected = reference.step(dummy_model(sample, 0), 0, sample, return_dict=False)
    assert_bitwise_equal(prev, expected[0])
    assert_bitwise_equal(x0, expected[1])


class _WarningCapture(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def diffusers_warnings():
    capture = _WarningCapture()
    logger = diffusers_logging.get_logger("diffusers")
    logger.addHandler(capture)
    yield capture.messages
    logger.removeHandler(capture)


def test_from_config_round_trips_without_unexpected_keys(diffusers_warnings):
    ours = DDPMPlusScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction", steps_offset=1)
    ddim = DDIMScheduler.from_config(ours.config)
    back = DDPMPlusScheduler.from_config(EulerDiscreteScheduler.from_config(ours.config).config)
    assert ddim.config.prediction_type == back.config.prediction_type == "v_prediction"
    assert back.config.beta_schedule == "scaled_linear" and back.config.steps_offset == 1
    assert not [m for m in diffusers_warnings if "config attributes" in m and "not expected" in m]
    # the capture sees such warnings when they happen
    DDPMPlusScheduler.from_config({**ours.config, "surely_not_a_key": 1})
    assert any("surely_not_a_key" in m for m in diffusers_warnings)


DDPM_SCHEDULER_CONFIGS = (
    [{"beta_schedule": schedule} for schedule in ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")]
    + [
        {"variance_type": variance, "prediction_type": prediction, "timestep_spacing": spacing}
        for variance, prediction, spacing in [
            ("fixed_small", "epsilon", "leading"),
            ("fixed_small_log", "sample", "trailing"),
            ("fixed_large", "v_prediction", "linspace"),
            ("fixed_large_log", "epsilon", "leading"),
            ("learned", "epsilon", "trailing"),
            ("learned_range", "v_prediction", "leading"),
        ]
    ]
    + [
        {"trained_betas": np.linspace(1e-4, 0.02, 50).tolist(), "num_train_timesteps": 50, "clip_sample": False},
        {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 2.0, "steps_offset": 1},
        {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    ]
)


@pytest.mark.parametrize("config", DDPM_SCHEDULER_CONFIGS)
def test_every_ddpm_scheduler_config_loads(config, tmp_path):
    """What DDPMScheduler accepts, DDPMPlusScheduler loads through from_config and from_pretrained (same tables)."""
    theirs = DDPMScheduler(**config)
    theirs.save_pretrained(tmp_path)
    public = {key: value for key, value in theirs.config.items() if not key.startswith("_")}
    for ours in (DDPMPlusScheduler.from_config(theirs.config), DDPMPlusScheduler.from_pretrained(tmp_path)):
        loaded = {key: value for key, value in ours.config.items() if not key.startswith("_")}
        assert json.loads(json.dumps(loaded)) == json.loads(json.dumps(public))
        for name in ("betas", "alphas_cumprod"):
            assert_bitwise_equal(getattr(ours, name), getattr(theirs, name))
