"""Run a command with a fault at the N-th call of a function: held there (until killed), or a full disk after it.

    python tests/helpers/fault_at.py --hold ddpm_plus.cli_sample:write_outputs --marker M -- ddpm-plus sample ...
    python tests/helpers/fault_at.py --full_disk ddpm_plus.pipeline_ddpm_plus:DDPMPlusPipeline.save_pretrained \\
        -- train --output_dir runs/x ...

`--hold` writes the file `--marker` when the call is reached and then sleeps, so that a test can act while the
command holds its output location, and kill it. `--full_disk` lets the call write its files, then raises
OSError(ENOSPC), as a disk that fills up at the end of a write. The command after `--` is `train ARGS` (the training
script, as `python train_scripts/train.py ARGS`) or `ddpm-plus ARGS`.
"""

from __future__ import annotations

import argparse
import errno
import functools
import importlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def patch_call(target: str, call: int, before: Callable[[], None], after: Callable[[], None]) -> None:
    """Replace `module:Name.attribute` (or `module:function`) by a wrapper that runs `before` and `after` around
    its `call`-th call."""
    module_name, _, path = target.partition(":")
    *owners, name = path.split(".")
    owner: Any = importlib.import_module(module_name)
    for attribute in owners:
        owner = getattr(owner, attribute)
    function = getattr(owner, name)
    calls = 0

    @functools.wraps(function)
    def faulty(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == call:
            before()
        result = function(*args, **kwargs)
        if calls == call:
            after()
        return result

    setattr(owner, name, faulty)


def hold(marker: Path) -> None:
    marker.write_text(str(os.getpid()))
    while True:
        time.sleep(1)


def full_disk() -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def run_command(command: Sequence[str]) -> int:
    if command[0] == "train":
        from helpers.train_with_faults import run_train_script

        return run_train_script(command[1:])
    from ddpm_plus.cli import main

    return main(command[1:])


def main(argv: Sequence[str]) -> int:
    separator = argv.index("--")
    parser = argparse.ArgumentParser(description="A fault at a call; the command follows --.")
    fault = parser.add_mutually_exclusive_group(required=True)
    fault.add_argument("--hold", metavar="TARGET", help="hold at this call until killed (default: no hold)")
    fault.add_argument("--full_disk", metavar="TARGET", help="a full disk after this call (default: none)")
    parser.add_argument("--call", type=int, default=1, help="which call of the target (default: 1)")
    parser.add_argument("--marker", type=Path, default=None, help="written when held (default: none)")
    options = parser.parse_args(argv[:separator])
    if options.hold is not None:
        patch_call(options.hold, options.call, functools.partial(hold, options.marker), lambda: None)
    else:
        patch_call(options.full_disk, options.call, lambda: None, full_disk)
    return run_command(argv[separator + 1 :])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
