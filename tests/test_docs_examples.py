"""Every Python block of docs/*.md and ARCHITECTURE.md runs as written, and every command the pages show parses.

A page's blocks run in order in one namespace, in a folder that holds what they name: a tiny saved pipeline at each
path they load, plain diffusers `DDPMPipeline` folders, the community folder and the checkpoint that
docs/converting.md converts (random weights with the released file's keys and shapes). The pages name what their
blocks take from the reader (`pipe`, a DDPMPlusPipeline; `images`, a batch on the 8-bit grid), and the namespace
starts with exactly those. A block that needs the Hub says so in its first line; it runs with the Hub's uploads
recorded instead of sent (as in tests/test_hub.py).
"""

import ast
import gzip
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler
from markdown_blocks import fenced_blocks, shown_commands
from openai_fixtures.weights import random_state_dict
from pipeline_fixtures import digits_unet

from ddpm_plus import DDPMPlusPipeline, DDPMPlusScheduler
from ddpm_plus.cli import build_parser
from ddpm_plus.convert import parse_flags
from ddpm_plus.training import parse_args

ROOT = Path(__file__).resolve().parents[1]
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "ARCHITECTURE.md"]
NEEDS_THE_HUB = "# needs the Hub"
# Where the blocks load a saved DDPMPlusPipeline from, a plain diffusers DDPMPipeline, and a DDPMPipeline saved with
# DDPMPlusScheduler swapped in.
SAVED_PIPELINES = ("runs/digits", "path/to/saved-pipeline", "path/or/user-repo")
PLAIN_DDPM_PIPELINES = ("path/to/ddpm",)
SWAPPED_SCHEDULER_PIPELINES = ("path/to/saved/pipeline",)
CONVERTED_CHECKPOINT = "cifar10_uncond_50M_500K.pt"


def python_blocks(page: Path) -> list[str]:
    return fenced_blocks(page.read_text(encoding="utf-8"), "python")


def released_checkpoint(name: str) -> dict:
    with gzip.open(ROOT / "tests" / "openai_fixtures" / "readme_checkpoints.json.gz", "rt") as file:
        return next(row for row in json.load(file) if row["checkpoint"] == name)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The working folder of the blocks, with everything they load."""
    folder = tmp_path_factory.mktemp("docs")
    pipe = DDPMPlusPipeline(unet=digits_unet(), scheduler=DDPMPlusScheduler())
    for path in SAVED_PIPELINES:
        pipe.save_pretrained(folder / path)
    for path in PLAIN_DDPM_PIPELINES:
        DDPMPipeline(unet=digits_unet(), scheduler=DDPMScheduler()).save_pretrained(folder / path)
    for path in SWAPPED_SCHEDULER_PIPELINES:
        DDPMPipeline(unet=digits_unet(), scheduler=DDPMPlusScheduler()).save_pretrained(folder / path)
    shutil.copytree(ROOT / "pipelines", folder / "pipelines")
    row = released_checkpoint(CONVERTED_CHECKPOINT)
    shapes = {key: [shape, "float32"] for key, shape in row["state_dict_shapes"].items()}
    torch.save(random_state_dict(shapes, seed=0), folder / CONVERTED_CHECKPOINT)
    return folder


def reader_namespace() -> dict:
    """What the pages say the reader brings: `pipe` and `images` (on the 8-bit grid k / 127.5 - 1). The network of
    `pipe` predicts ε = 0, so that the probability-flow ODE is smooth and its solver takes few steps, as it does for
    a trained model (random weights take thousands)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 1, 16, 16), generator=generator).float() / 127.5 - 1
    unet = digits_unet()
    torch.nn.init.zeros_(unet.conv_out.weight)
    torch.nn.init.zeros_(unet.conv_out.bias)
    return {"pipe": DDPMPlusPipeline(unet=unet, scheduler=DDPMPlusScheduler()), "images": images}


PAGES_WITH_EXAMPLES = [page for page in PAGES if python_blocks(page)]


def test_the_pages_with_examples_are_known():
    names = {page.name for page in PAGES_WITH_EXAMPLES}
    assert {"likelihood.md", "pipelines.md", "training.md", "converting.md"} <= names


@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=lambda page: page.name)
def test_python_blocks_run_as_written(page, folder, monkeypatch, hub_calls):
    monkeypatch.chdir(folder)
    monkeypatch.setenv("HF_TOKEN", "hf_docs_example_token")  # the Hub blocks' uploads are recorded (hub_calls)
    namespace = reader_namespace()
    blocks = python_blocks(page)
    for block in blocks:
        exec(compile(block, page.name, "exec"), namespace)  # noqa: S102 - the page's own examples
    hub_blocks = [block for block in blocks if block.startswith(NEEDS_THE_HUB)]
    assert len(hub_calls["uploads"]) == len(hub_blocks)  # each upload was one marked block


def imported_names(tree: ast.AST) -> set[str]:
    return {
        (alias.asname or alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }


def used_names(tree: ast.AST) -> set[str]:
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}


@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=lambda page: page.name)
def test_each_block_imports_what_it_uses(page):
    """A block copied alone needs only the page's data (`pipe`, results of earlier blocks), never an import that an
    earlier block made."""
    earlier_imports: set[str] = set()
    for block in python_blocks(page):
        tree = ast.parse(block)
        missing = (used_names(tree) & earlier_imports) - imported_names(tree)
        assert not missing, f"{page.name}: a block uses {sorted(missing)} without importing them:\n{block}"
        earlier_imports |= imported_names(tree)


def test_the_converting_example_converts_the_released_checkpoint_it_names(folder):
    """docs/converting.md's Python example gives the flags of the released file it names (improved-diffusion's
    README lists them)."""
    block = python_blocks(ROOT / "docs" / "converting.md")[0]
    flags = re.search(r'flags = "([^"]+)"', block).group(1)
    row = released_checkpoint(CONVERTED_CHECKPOINT)
    assert parse_flags(flags, row["source"]) == parse_flags(row["flags"], row["source"])


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_shown_commands_parse(page):
    """Every `ddpm-plus` command (plainly or as `-m ddpm_plus.cli`) and every training command of the page is
    accepted by the real parser."""
    blocks = fenced_blocks(page.read_text(encoding="utf-8"), "bash")
    for arguments in shown_commands(blocks, "ddpm-plus") + shown_commands(blocks, "ddpm_plus.cli"):
        assert build_parser().parse_args(arguments).command == arguments[0]
    for arguments in shown_commands(blocks, "train_scripts/train.py"):
        assert parse_args(arguments).output_dir
