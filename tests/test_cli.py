"""The `ddpm-plus` command line without a model: instant help and argument errors (no torch), and output locations
checked before anything is loaded or computed."""

import argparse
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pipeline_fixtures import ddpm_unet

from ddpm_plus import DDPMPlusScheduler, cli
from ddpm_plus.cli import main

REPO = Path(__file__).resolve().parents[1]
HEAVY_MODULES = ("torch", "diffusers", "numpy", "matplotlib")

_IMPORTS_AFTER_SCRIPT = """
import json
import runpy
import sys

results = {{}}
for argv in {argvs!r}:
    sys.argv = ["{program}", *argv]
    try:
        {run}
    except SystemExit as exit:
        results[" ".join(argv)] = exit.code
print(json.dumps({{"exit_codes": results, "heavy": [name for name in {heavy!r} if name in sys.modules]}}))
"""


def test_help_and_argument_errors_import_neither_torch_nor_diffusers(tmp_path: Path) -> None:
    argvs = [
        ["--help"],
        ["sample", "--help"],
        ["bpd", "--help"],
        ["bpd", "--model", "m", "--num-timesteps", "2"],  # argparse error
        ["bpd", "--model", "m", "--batch-size", "0"],  # checked value: one line, exit 2
        ["sample", "--model", "m", "--out", str(tmp_path / "file.txt" / "grid.png")],  # unwritable output
        ["bpd", "--model", "m", "--plot", str(tmp_path / "file.txt" / "bound.png")],  # matplotlib found, not imported
        ["fid", "--help"],
        ["fid", "--samples", "a.npz", "--reference", "b", "--output", str(tmp_path / "file.txt" / "r.json")],
        ["sample", "--model", "m", "--out", str(tmp_path / "grid.png"), "--dtype", "float16", "--device", "cpu"],
    ]
    (tmp_path / "file.txt").write_text("a file, not a directory")
    result = run_without_heavy_imports(
        argvs, program="ddpm-plus", run='runpy.run_module("ddpm_plus.cli", run_name="__main__")'
    )
    assert result["heavy"] == [], result["stderr"]
    assert list(result["exit_codes"].values()) == [0, 0, 0, 2, 2, 2, 2, 0, 2, 2]
    assert "--batch-size must be positive" in result["stderr"] and "Traceback" not in result["stderr"]
    assert "--dtype float16 needs a GPU" in result["stderr"]


def test_the_training_scripts_help_and_malformed_flags_import_neither_torch_nor_diffusers() -> None:
    script = REPO / "train_scripts" / "train.py"
    argvs = [["--help"], ["--output_dir", "x", "--loss", "nonsense"], ["--output_dir", "x", "--seed", "one"]]
    result = run_without_heavy_imports(
        argvs, program=str(script), run=f"runpy.run_path({str(script)!r}, run_name='__main__')"
    )
    assert set(result["heavy"]) <= {"numpy"}, result["stderr"]
    assert list(result["exit_codes"].values()) == [0, 2, 2]
    assert "invalid choice: 'nonsense'" in result["stderr"] and "invalid int value: 'one'" in result["stderr"]
    for option in ("--lr_scheduler", "--timestep_sampler", "--variance_type", "--model_config"):
        assert option in result["stdout"]
    assert "cosine_with_restarts" in result["stdout"] and "loss-second-moment" in result["stdout"]


def run_without_heavy_imports(argvs: list[list[str]], *, program: str, run: str) -> dict:
    """Run `run` (a statement) once per argv in one fresh interpreter: the exit codes, the output, and which of
    HEAVY_MODULES were imported by the end."""
    script = _IMPORTS_AFTER_SCRIPT.format(argvs=argvs, heavy=HEAVY_MODULES, program=program, run=run)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    *output, report = result.stdout.strip().splitlines()
    return {**json.loads(report), "stdout": "\n".join(output), "stderr": result.stderr}


_PACKAGE_SCRIPT = """
import sys

import ddpm_plus

assert [name for name in {heavy!r} if name in sys.modules] == []
registered = sys.modules["ddpm_plus.scheduling_ddpm_plus"]  # for diffusers' loader, which looks it up there
import diffusers.pipelines  # torch's import reads `__file__` of every module in sys.modules (inspect.getmodule)

from ddpm_plus.scheduling_ddpm_plus import DDPMPlusScheduler

assert registered is sys.modules["ddpm_plus.scheduling_ddpm_plus"] is ddpm_plus.scheduling_ddpm_plus
assert DDPMPlusScheduler is registered.DDPMPlusScheduler is ddpm_plus.DDPMPlusScheduler
assert type(registered).__name__ == "module" and DDPMPlusScheduler.__module__ == registered.__name__
print("ok")
"""


def test_import_ddpm_plus_is_light_and_its_scheduler_module_runs_on_first_use() -> None:
    script = _PACKAGE_SCRIPT.format(heavy=HEAVY_MODULES)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.stdout.split() == ["ok"], result.stderr[-4000:]


@pytest.fixture
def no_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a sub-command runs (loads the model): `main` finds these stand-ins in `sys.modules`."""

    def refuse(args) -> int:
        raise AssertionError(f"`ddpm-plus {args.command}` ran before its output location was checked")

    for name in ("ddpm_plus.cli_bpd", "ddpm_plus.cli_sample"):
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(run=refuse))


def unwritable_locations(tmp_path: Path) -> dict[str, Path]:
    """Output paths that cannot be written, even by root: under a regular file, and an existing directory."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a directory")
    existing_directory = tmp_path / "taken.png"
    existing_directory.mkdir()
    return {"is not a directory": blocker / "sub" / "out.png", "is a directory": existing_directory}


@pytest.mark.usefixtures("no_model_loading")
def test_bpd_refuses_an_unwritable_output_before_loading_the_model(tmp_path: Path, capsys) -> None:
    for expected, output in unwritable_locations(tmp_path).items():
        status = main(["bpd", "--model", str(tmp_path / "no-such-model"), "--output", str(output)])
        error = capsys.readouterr().err
        assert status == 2 and error.count("\n") == 1, error
        assert "--output" in error and expected in error and "no-such-model" not in error


@pytest.mark.usefixtures("no_model_loading")
def test_sample_refuses_an_unwritable_output_before_loading_the_model(tmp_path: Path, capsys) -> None:
    locations = unwritable_locations(tmp_path)
    single_images_blocked = tmp_path / "grid.png"
    (tmp_path / "grid").write_text("where the single images would go")
    locations["exists and is not a directory"] = single_images_blocked
    for expected, out in locations.items():
        status = main(["sample", "--model", str(tmp_path / "no-such-model"), "--out", str(out)])
        error = capsys.readouterr().err
        assert status == 2 and error.count("\n") == 1, error
        assert "--out" in error and expected in error and "no-such-model" not in error


@pytest.mark.usefixtures("no_model_loading")
def test_bpd_refuses_an_unwritable_plot_before_loading_the_model(tmp_path: Path, capsys) -> None:
    for expected, plot in unwritable_locations(tmp_path).items():
        status = main(["bpd", "--model", str(tmp_path / "no-such-model"), "--plot", str(plot)])
        error = capsys.readouterr().err
        assert status == 2 and error.count("\n") == 1, error
        assert "--plot" in error and expected in error and "no-such-model" not in error
    with pytest.raises(SystemExit) as exit_info:  # the figure is a PNG file
        main(["bpd", "--model", str(tmp_path / "no-such-model"), "--plot", str(tmp_path / "bound.pdf")])
    assert exit_info.value.code == 2 and "must be a .png file" in capsys.readouterr().err


@pytest.mark.usefixtures("no_model_loading")
def test_bpd_plot_without_matplotlib_is_one_line_naming_the_extra(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = importlib.util.find_spec

    def find_spec(name: str, *args):  # matplotlib is not installed
        return None if name == "matplotlib" else installed(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    status = main(["bpd", "--model", str(tmp_path / "no-such-model"), "--plot", str(tmp_path / "bound.png")])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1, error
    assert "--plot needs matplotlib" in error and "pip install 'ddpm_plus[plot]'" in error
    assert not (tmp_path / "bound.png").exists()


def test_writable_output_locations_pass_and_create_nothing(tmp_path: Path) -> None:
    cli.check_output_file(tmp_path / "new" / "deeper" / "results.json", "--output")
    (tmp_path / "old.json").write_text("{}")
    cli.check_output_file(tmp_path / "old.json", "--output")
    cli.check_output_directory(tmp_path / "images", "--out")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["old.json"]


def test_bpd_refuses_16_bit_and_float_images_naming_them(tmp_path: Path, capsys) -> None:
    """Once flattened to white (16-bit) or black (float) and scored; now one line naming the files and modes."""
    torch.manual_seed(0)
    ddpm_unet(in_channels=1).save_pretrained(tmp_path / "model" / "unet")
    DDPMPlusScheduler(num_train_timesteps=20).save_pretrained(tmp_path / "model" / "scheduler")
    (tmp_path / "data").mkdir()
    Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)).save(tmp_path / "data" / "grey16.png")
    Image.fromarray(np.full((16, 16), 0.5, dtype=np.float32)).save(tmp_path / "data" / "float.tif")
    argv = ["bpd", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "data"), "--split", "train"]
    assert main([*argv, "--output", str(tmp_path / "results.json")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "grey16.png: mode 'I;16'" in error and "float.tif: mode 'F'" in error
    assert not (tmp_path / "results.json").exists()


def test_sample_names_a_missing_model_directory(tmp_path: Path, capsys) -> None:
    (tmp_path / "weights.bin").write_text("not a pipeline")
    for model, expected in [
        (tmp_path / "no-such-model", "no such folder, and not a Hub id (owner/name)"),
        (tmp_path / "weights.bin", "is a file; give a saved pipeline folder or a Hub id (owner/name)"),
    ]:
        assert main(["sample", "--model", str(model), "--out", str(tmp_path / "grid.png")]) == 2
        error = capsys.readouterr().err
        assert f"--model {model}" in error and expected in error and error.count("\n") == 1


# --------------------------------------------------------------------------------------------- ddpm-plus fid


def test_unwritable_outputs_are_one_line_before_anything_is_read(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ddpm_plus.cli_fid", types.SimpleNamespace(run=None))  # never run
    (tmp_path / "file.txt").write_text("a file, not a directory")
    for option, value, expected in [
        ("--output", tmp_path / "file.txt" / "results.json", "--output"),
        ("--cache-dir", tmp_path / "file.txt" / "cache", "--cache-dir"),
    ]:
        argv = ["fid", "--samples", "a.npz", "--reference", "b", option, str(value)]
        status = main(argv)
        error = capsys.readouterr().err
        assert status == 2 and error.count("\n") == 1 and expected in error and "is not a directory" in error, error


def test_without_the_eval_extra_the_command_names_it(tmp_path, capsys, monkeypatch):
    real_find_spec = __import__("importlib.util").util.find_spec
    monkeypatch.setattr(
        "importlib.util.find_spec", lambda name, *a: None if name == "torch_fidelity" else real_find_spec(name, *a)
    )
    assert main(["fid", "--samples", "a.npz", "--reference", "b", "--cache-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "pip install 'ddpm_plus[eval]'" in error


def all_parsers():
    """The parsers of `ddpm-plus`, each sub-command's and the training script's, with their names."""
    from ddpm_plus.cli import build_parser
    from ddpm_plus.training.arguments import build_parser as training_parser

    top = build_parser()
    yield "ddpm-plus", top
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from ((f"ddpm-plus {name}", parser) for name, parser in action.choices.items())
    yield "train.py", training_parser()


def test_every_option_has_help_that_shows_its_default() -> None:
    """Every option of every command has a help text; every option that takes a value shows its default (the
    formatter appends it, or the help says what the default None means)."""
    from ddpm_plus.cli import HelpFormatter

    missing = []
    for name, parser in all_parsers():
        formatter = HelpFormatter(name)
        for action in parser._actions:
            if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            text = formatter._get_help_string(action) % {"default": action.default}
            if not (action.help or "").strip():
                missing.append(f"{name} {action.option_strings[0]}: no help")
            elif action.nargs != 0 and not action.required and "default" not in text.lower():
                missing.append(f"{name} {action.option_strings[0]}: no default")
    assert missing == []
    assert "(default: 0.002)" in next(parser for name, parser in all_parsers() if name == "train.py").format_help()


def test_version() -> None:
    import importlib.metadata

    result = subprocess.run([sys.executable, "-m", "ddpm_plus.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"ddpm-plus {importlib.metadata.version('ddpm_plus')}"


@pytest.mark.usefixtures("no_model_loading")
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--method", "ode", "--num-timesteps", "10"], "--method ode takes no --num-timesteps (options of the"),
        (["--method", "ode", "--pilot-images", "2", "--clip-denoised"], "takes no --pilot-images, --clip-denoised"),
        (["--rtol", "1e-3"], "--method bound takes no --rtol (options of --method ode)"),
        (["--method", "ode", "--rtol", "0"], "--rtol (a tolerance of the ODE solver) must be positive, got 0.0"),
        (["--method", "ode", "--atol=-1e-5"], "--atol (a tolerance of the ODE solver) must be positive"),
        (["--method", "ode", "--num-probes", "0"], "--num-probes must be positive, got 0"),
        (["--method", "ode", "--draws", "0"], "--draws must be positive, got 0"),
    ],
)
def test_bpd_ode_option_errors_are_one_line_before_the_model_loads(tmp_path, capsys, options, message) -> None:
    status = main(["bpd", "--model", str(tmp_path / "no-such-model"), *options])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1 and message in error, error


def test_bpd_ode_refuses_an_integer_time_embedding_in_one_line_before_any_work(tmp_path: Path, capsys) -> None:
    from diffusers import UNet2DModel

    UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(4, 8), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4, time_embedding_type="learned", num_train_timesteps=20,
    ).save_pretrained(tmp_path / "model" / "unet")  # fmt: skip
    DDPMPlusScheduler(num_train_timesteps=20).save_pretrained(tmp_path / "model" / "scheduler")
    argv = ["bpd", "--model", str(tmp_path / "model"), "--method", "ode", "--output", str(tmp_path / "r.json")]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "learned table of integer timesteps" in error
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "r.json.partial").exists()


# --------------------------------------------------------------------------------------------- devices and seeds


def test_a_device_index_beyond_the_machines_devices_is_named(monkeypatch) -> None:
    from ddpm_plus.sharding import check_device, default_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert default_device("cuda:1") == "cuda:1" and default_device("cuda") == "cuda"
    with pytest.raises(ValueError, match=r"--device cuda:7: this machine has 2 cuda devices \(cuda:0 to cuda:1\)"):
        check_device("cuda:7")


@pytest.mark.parametrize(
    ("seed", "seeds_used", "valid"),
    [(0, 1, True), (2**64 - 1, 1, True), (2**64 - 3, 3, True), (2**64 - 2, 3, False), (-1, 1, False)],
)
def test_seeds_are_those_torch_takes_for_every_image(seed, seeds_used, valid) -> None:
    if valid:
        cli.check_seed(seed, seeds_used)
        torch.Generator().manual_seed(seed + seeds_used - 1)
    else:
        with pytest.raises(ValueError, match=rf"--seed must lie in 0\.\.{2**64 - seeds_used}.*got {seed}"):
            cli.check_seed(seed, seeds_used)
