# Copyright 2026 The ddpm_plus authors. Licensed under the Apache License, Version 2.0.
"""Optional dependencies: a bare `pip install ddpm_plus` has the scheduler, the pipelines and the exact bound;
training, 🤗 datasets sources and model cards come with the extras named in pyproject.toml."""

import ast
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any


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


def source_constants(module: str, scope: str | None = None) -> dict[str, Any]:
    """The literal constants (`NAME = ("a", "b")`) of `module`'s source, at its top level or in its class `scope`,
    read without running the module: command lines offer the choices of modules that import torch, and still answer
    `--help` at once."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)  # a top-level package: found, not imported
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"No package {top!r}", name=top)
    path = Path(spec.submodule_search_locations[0], *rest[:-1], f"{rest[-1]}.py" if rest else "__init__.py")
    body = ast.parse(path.read_text(encoding="utf-8")).body
    if scope is not None:
        body = next(node.body for node in body if isinstance(node, ast.ClassDef) and node.name == scope)
    constants = {}
    for node in body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue  # not a literal
    return constants


def exports_on_first_use(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list]]:
    """A package's `__getattr__` and `__dir__` (PEP 562) for `exports`, public name -> submodule: a name's module is
    imported when the name is first looked up, so importing the package itself stays light."""

    def lookup(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    def names() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return lookup, names
