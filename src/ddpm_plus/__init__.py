"""ddpm_plus: the DDPM paper, complete and correct, inside Hugging Face diffusers."""

import importlib
import importlib.util
import sys
import threading
from types import ModuleType
from typing import Any

from ddpm_plus.extras import exports_on_first_use

__version__ = "0.1.0"

_LAZY_LOAD_LOCK = threading.RLock()


class _ModuleRunOnFirstUse(ModuleType):
    """A module registered in `sys.modules` whose code runs when one of its names is first looked up, in place (the
    object stays the one in `sys.modules`). Dunder lookups do not run it: tools that walk `sys.modules` (e.g.
    `inspect.getmodule`, which torch calls while it imports) read `__file__` of every module, and running the code
    in the middle of torch's own import would import a half-initialized torch."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        with _LAZY_LOAD_LOCK:
            if type(self) is _ModuleRunOnFirstUse:
                self.__class__ = ModuleType  # a lookup while the code runs finds what is defined so far
                try:
                    self.__spec__.loader.exec_module(self)
                except BaseException:
                    sys.modules.pop(self.__name__, None)  # as a failed import leaves it
                    raise
        return ModuleType.__getattribute__(self, name)


def _register_for_first_use(name: str) -> ModuleType:
    """Module `name`, put in `sys.modules` now and run on the first lookup of one of its names."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    module = importlib.util.module_from_spec(spec)
    module.__class__ = _ModuleRunOnFirstUse
    sys.modules[name] = module
    return module


# diffusers' loader resolves a saved component such as ["ddpm_plus.scheduling_ddpm_plus", "DDPMPlusScheduler"] only
# among modules that are already imported (in `sys.modules`), so `import ddpm_plus` registers the scheduler module;
# its code (torch, numpy and diffusers) runs when the loader, or anyone, first looks up one of its names. So
# `import ddpm_plus` and `ddpm-plus --help` import no torch. Every other public name is imported on first use.
scheduling_ddpm_plus = _register_for_first_use(f"{__name__}.scheduling_ddpm_plus")

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
    "BoundResult": "likelihood",
    "BoundTerms": "likelihood",
    "estimate_bound": "bound_estimation",
    "evaluate_terms": "bound_estimation",
    "pilot_profile": "bound_estimation",
    "pilot_terms": "bound_estimation",
    "PilotTerms": "bound_estimation",
    "schedule_profile": "bound_estimation",
    "make_strata": "bound_estimation",
    "BoundEstimate": "bound_estimation",
    "ode_likelihood": "probability_flow",
    "ODELikelihoodResult": "probability_flow",
    "ContinuousSchedule": "probability_flow",
    "bound_figure": "plots",
    "bound_figure_data": "plots",
    "save_bound_figure": "plots",
    "ode_figure": "plots",
    "save_ode_figure": "plots",
    "BoundFigureData": "plots",
    "load_image_dataset": "data",
    "make_grid": "data",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = exports_on_first_use(__name__, _EXPORTS)
