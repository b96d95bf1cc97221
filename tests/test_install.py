"""What a bare `pip install ddpm_plus` (no extras) can do: the scheduler, the pipelines, the exact bound and its
estimate (scipy is a core dependency) and the embedded digits, without accelerate, 🤗 datasets, scikit-learn or
matplotlib; and the one-line message when an extra is missing.

`test_bare_install` runs in the wheel session of noxfile.py, in an environment where those packages are really
absent. Everywhere else, `test_core_runs_with_the_extras_blocked` runs the same script with them made unimportable.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXTRAS_MODULES = ("accelerate", "datasets", "matplotlib", "sklearn", "tensorboard", "transformers")
TESTS = Path(__file__).resolve().parent

# None in sys.modules: `import name` raises ModuleNotFoundError and `importlib.util.find_spec(name)` is None, as for
# a package that is not installed.
_BLOCK_EXTRAS = """
import sys

sys.modules.update(dict.fromkeys({blocked!r}))
"""

_CORE_SCRIPT = """
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, {tests!r})
from pipeline_fixtures import SCHEDULER_CONFIG, tiny_unet

from ddpm_plus import DDPMPlusPipeline, DDPMPlusScheduler, bound_figure, estimate_bound
from ddpm_plus.data import digits_uint8, load_image_dataset
from ddpm_plus.training import create_accelerator

torch.set_num_threads(1)
# One sampling step, and the exact bound, with the core dependencies only.
pipe = DDPMPlusPipeline(unet=tiny_unet(), scheduler=DDPMPlusScheduler(**SCHEDULER_CONFIG))
pipe.set_progress_bar_config(disable=True)
images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=1, output_type="np").images
assert images.shape == (2, 8, 8, 3) and np.isfinite(images).all()
pixels = (images * 255).round().astype(np.uint8)
assert torch.isfinite(pipe.log_likelihood(pixels, generator=torch.Generator().manual_seed(0)).bits_per_dim).all()
# The estimate of the bound and its Student t interval (scipy).
x0 = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
estimate = estimate_bound(pipe, x0, num_strata=3, generator=torch.Generator().manual_seed(0), progress=False)
low, high = estimate.interval(0.95)
assert (low <= estimate.total_bpd).all() and (estimate.total_bpd <= high).all() and "scipy" in sys.modules
# The embedded digits need no scikit-learn.
assert digits_uint8("test", 8).shape == (297, 8, 8)
# A missing extra is one line that names it.
for call, extra in [
    (lambda: load_image_dataset("user/some-dataset"), "train"),
    (lambda: create_accelerator(project_dir="unused"), "train"),
    (lambda: bound_figure(estimate), "plot"),
]:
    with pytest.raises(ModuleNotFoundError) as error:
        call()
    message = str(error.value)
    assert "\\n" not in message and f"pip install 'ddpm_plus[{{extra}}]'" in message, message
print("core ok")
"""


def run_core_script(prefix: str = "") -> subprocess.CompletedProcess:
    script = prefix + _CORE_SCRIPT.format(tests=str(TESTS))
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=300)


@pytest.mark.bare_install
def test_bare_install():
    """Run by `nox -s wheel` in a venv with the wheel and pytest only: the extras are really absent, and the core
    dependencies (scipy among them) were installed with the wheel."""
    assert [name for name in EXTRAS_MODULES if importlib.util.find_spec(name) is not None] == []
    assert importlib.util.find_spec("scipy") is not None
    result = run_core_script()
    assert result.returncode == 0 and result.stdout.split() == ["core", "ok"], result.stderr[-4000:]


def test_core_runs_with_the_extras_blocked():
    result = run_core_script(_BLOCK_EXTRAS.format(blocked=EXTRAS_MODULES))
    assert result.returncode == 0 and result.stdout.split() == ["core", "ok"], result.stderr[-4000:]
