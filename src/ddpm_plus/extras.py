# Copyright 2026 The ddpm_plus authors. Licensed under the Apache License, Version 2.0.
"""Optional dependencies: a bare `pip install ddpm_plus` has the scheduler, the pipelines and the exact bound;
training, 🤗 datasets sources and model cards come with the extras named in pyproject.toml."""

import importlib
from types import ModuleType


def import_extra(module: str, extra: str) -> ModuleType:
    """Import `module`, or fail with one line naming the `ddpm_plus[extra]` install that provides it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name != module.split(".")[0]:
            raise  # the module is installed, but something it imports is not: diffusers' own message is clearer
        raise ModuleNotFoundError(
            f"This needs the optional dependency {module!r}: pip install 'ddpm_plus[{extra}]'", name=error.name
        ) from None
