"""ddpm_plus: the DDPM paper, complete and correct, inside Hugging Face diffusers."""

import importlib
from typing import Any

__version__ = "0.1.0"

# diffusers' loader resolves a saved component such as ["ddpm_plus.scheduling_ddpm_plus", "DDPMPlusScheduler"] only
# among modules that are already imported, so `import ddpm_plus` imports the scheduler module (torch, numpy and
# diffusers only). Every other public name is imported on first use.
from . import scheduling_ddpm_plus  # noqa: F401

# Public names and the modules that define them.
_EXPORTS = {
    "DDPMPlusScheduler": "scheduling_ddpm_plus",
    "DDPMPlusSchedulerOutput": "scheduling_ddpm_plus",
    "UniformSampler": "timestep_samplers",
    "LossSecondMomentResampler": "timestep_samplers",
    "create_timestep_sampler": "timestep_samplers",
    "DDPMPlusPipeline": "pipeline_ddpm_plus",
    "DDPMPlusPosteriorPipeline": "pipeline_ddpm_plus_posterior",
    "unet_config": "models",
    "build_unet": "models",
    "available_configs": "models",
    "save_unet_config": "models",
    "downsampling_factor": "models",
    "variational_bound": "likelihood",
    "estimate_bound": "likelihood",
    "evaluate_terms": "likelihood",
    "pilot_profile": "likelihood",
    "schedule_profile": "likelihood",
    "make_strata": "likelihood",
    "BoundResult": "likelihood",
    "BoundEstimate": "likelihood",
    "BoundTerms": "likelihood",
    "load_image_dataset": "data",
    "make_grid": "data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ddpm_plus' has no attribute {name!r}")
    module = importlib.import_module(f"ddpm_plus.{_EXPORTS[name]}")
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
