"""Small helpers that several modules of the package share: JSON files, derived seeds and public settings.

They stay in the package: the code files shipped with saved pipelines never import them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

Settings = Mapping[str, Any] | Iterable[tuple[str, Any]] | argparse.Namespace
# Setting names left out of model cards, trackers and checkpoints: credentials must never reach a file.
_SECRET_NAME = re.compile(r"token|secret|password|credential|api_?key", re.IGNORECASE)


def write_json(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON to `path`, atomically: a temporary file beside it is renamed into place, so the
    file is never half-written. Floats round-trip exactly; NaN and infinity are refused (they are not JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A new file of a random name ("x" mode) gets the permissions of any file the user creates (tempfile's are 0600).
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        with open(temporary, "x", encoding="utf-8") as file:
            json.dump(data, file, indent=2, allow_nan=False)
            file.write("\n")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def derived_seed(*keys: int) -> int:
    """A 63-bit seed derived from integer keys (a run seed, a process or image index, a stream number) through
    numpy's `SeedSequence`: different keys give independent streams."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def public_settings(settings: Settings | None) -> dict[str, Any]:
    """The settings without those whose names look like secrets (token, password, api key, ...)."""
    if settings is None:
        return {}
    items = vars(settings) if isinstance(settings, argparse.Namespace) else dict(settings)
    return {str(name): value for name, value in items.items() if not _SECRET_NAME.search(str(name))}
