"""Helpers of the test suite.

* `TINY_UNET_CONFIG`: the JSON `UNet2DModel` config of the tests (for `--model_config`, `unet_config`, `build_unet`):
  16x16 RGB images, two levels of 8 and 16 channels with attention at 8x8 and in the middle block, and the DDPM
  conventions of `ddpm_plus.models`. 45,259 parameters: every block type runs in milliseconds (it learns next to
  nothing).
* `train_with_faults`: runs `train_scripts/train.py` in the test's process, or under `accelerate launch`, with faults
  injected into `ddpm_plus.training` (NaN images, a SIGKILL while a checkpoint is written) and each process's work
  recorded.
"""

from pathlib import Path

TINY_UNET_CONFIG = Path(__file__).resolve().with_name("tiny_unet.json")
