"""Scripts run in a fresh Python process, offline, with their own Hugging Face cache (so their own, empty, module
cache of remote code); `BLOCK_DDPM_PLUS`, prepended to a script, makes ddpm_plus unimportable there (as in an
environment without it, however it was installed) while the rest of the environment stays importable."""

import os
import subprocess
import sys
from pathlib import Path

BLOCK_DDPM_PLUS = """
import importlib.abc
import sys


class BlockDdpmPlus(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "ddpm_plus":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None


sys.meta_path.insert(0, BlockDdpmPlus())
try:
    import ddpm_plus  # noqa: F401

    hidden = False
except ModuleNotFoundError:
    hidden = True
"""


def fresh_process(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `python -c script args...` in `cwd` (its Hugging Face cache under cwd/hf_home); fail on a non-zero exit."""
    environment = {**os.environ, "HF_HOME": str(cwd / "hf_home"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result
