"""Small helpers that several modules of the package share: atomic files and folders, derived seeds, public settings
and the comparison of recorded settings.

They stay in the package: the code files shipped with saved pipelines never import them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

Settings = Mapping[str, Any] | Iterable[tuple[str, Any]] | argparse.Namespace
# Setting names left out of model cards, trackers and checkpoints: credentials must never reach a file.
_SECRET_NAME = re.compile(r"token|secret|password|credential|api_?key", re.IGNORECASE)


def write_json(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON to `path`, atomically (see `atomic_path`), so the file is never half-written.
    Floats round-trip exactly; NaN and infinity are refused (they are not JSON)."""
    with atomic_path(path) as temporary, open(temporary, "x", encoding="utf-8") as file:
        json.dump(data, file, indent=2, allow_nan=False)
        file.write("\n")


def read_json_object(path: str | Path, error: type[Exception] = ValueError) -> dict[str, Any]:
    """The JSON object in `path` (a manifest, settings); an `error` naming the file when it cannot be read, is not
    JSON (truncated, corrupt) or is not an object."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as problem:
        raise error(f"{path} cannot be read (truncated or corrupt: {problem}).") from None
    if not isinstance(value, dict):
        raise error(f"{path} holds a JSON {type(value).__name__}, not an object (corrupt).")
    return value


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A new temporary path beside `path` for the body to write; renamed to `path` when the body succeeds, removed
    when it fails, so `path` is either its old file or the complete new one, never half-written. Creates the parent
    directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A new file of a random name ("x" mode) gets the permissions of any file the user creates (tempfile's are 0600).
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """A new temporary directory beside `path` for the body to fill; when the body succeeds it takes the place of
    `path` (an existing `path` is moved aside first and removed last), when it fails it is removed, so `path` is
    either its old contents or the complete new ones, never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    temporary.mkdir()
    try:
        yield temporary
        if path.exists():
            old = path.with_name(f".{path.name}.{secrets.token_hex(8)}.old")
            os.replace(path, old)
            os.replace(temporary, path)
            shutil.rmtree(old)
        else:
            os.replace(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


@contextmanager
def atomic_entries(directory: str | Path, name: str, *, last: str) -> Iterator[Path]:
    """A new temporary folder `.<name>.tmp` inside `directory` for the body to fill; when the body succeeds, each of
    its entries takes the place of the entry of that name in `directory`, by renames only (no data is written then,
    so a full disk cannot interrupt it), and the entries replaced are removed (through `.<name>.old`). The entry
    `last` (e.g. the file that marks a folder as complete) leaves first and arrives last. When the body fails, the
    temporary folder is removed and `directory` is as it was. Leftovers of an interrupted call are replaced."""
    directory = Path(directory)
    temporary, replaced = directory / f".{name}.tmp", directory / f".{name}.old"
    for leftover in (temporary, replaced):
        shutil.rmtree(leftover, ignore_errors=True)
    temporary.mkdir(parents=True)
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    replaced.mkdir()
    entries = sorted(temporary.iterdir(), key=lambda entry: entry.name == last)  # `last` at the end
    for entry in reversed(entries):
        if os.path.lexists(directory / entry.name):
            os.replace(directory / entry.name, replaced / entry.name)
    for entry in entries:
        os.replace(entry, directory / entry.name)
    temporary.rmdir()
    shutil.rmtree(replaced)


def first_difference(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """'name: A there, B now' for the first setting of `current` whose value `recorded` (e.g. an earlier run's
    manifest) does not share, or None when all agree."""
    for key, value in current.items():
        if recorded.get(key) != value:
            return f"{key}: {recorded.get(key)!r} there, {value!r} now"
    return None


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
