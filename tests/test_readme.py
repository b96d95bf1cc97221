"""The README opens with the two commands, CI runs the second, every example it shows runs, and its links resolve."""

import re
from pathlib import Path

import pytest
from markdown_blocks import fenced_blocks, shown_commands
from pipeline_fixtures import digits_unet

from ddpm_plus import DDPMPlusPipeline, DDPMPlusScheduler

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 250


def readme_commands() -> list[str]:
    """The first two fenced bash blocks of the README, each one line."""
    return fenced_blocks(README, "bash")[:2]


def readme_shown_commands(*programs: str) -> list[list[str]]:
    """The arguments of every README command after the first two that runs one of `programs`."""
    blocks = fenced_blocks(README, "bash")[2:]
    return [arguments for program in programs for arguments in shown_commands(blocks, program)]


def test_readme_opens_with_the_two_commands():
    train, test = readme_commands()
    first_block = README.index("```bash")
    assert README[:first_block].count("```") == 0  # nothing precedes the two commands but prose
    assert "\n" not in train and "\n" not in test
    assert train.startswith("python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0")
    assert "accelerate launch train_scripts/train.py" in train
    assert test.endswith("python -m pytest")


def test_readme_is_a_front_door():
    assert len(README.splitlines()) <= MAX_README_LINES


def test_ci_runs_the_readme_test_command_first_then_the_matrix():
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    commands = [line for line in ci_lines if line not in ("set -euo pipefail", 'cd "$(dirname "$0")/.."')]
    assert commands == [readme_commands()[1], '.venv/bin/pip install -q -e ".[matrix]" && .venv/bin/nox']


def test_the_pipelines_page_contains_the_tested_swap_snippet():
    snippet = (ROOT / "tests" / "snippets" / "swap_scheduler.py").read_text(encoding="utf-8").strip()
    assert snippet in (ROOT / "docs" / "pipelines.md").read_text(encoding="utf-8")


def test_readme_states_the_declared_lower_bounds():
    """Every lower bound in pyproject.toml (each one a nox session) is the one the README states."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    project = pyproject[pyproject.index("[project]") : pyproject.index("[project.scripts]")]
    floors = dict(re.findall(r'"([A-Za-z_]+)>=([0-9.]+)"', project))
    assert {"diffusers", "torch", "huggingface_hub", "accelerate", "transformers"} <= set(floors)
    for name, version in floors.items():
        assert f"`{name}>={version}`" in README, name
    python_floor = re.search(r'requires-python = ">=([0-9.]+)"', pyproject).group(1)
    assert f"`requires-python >= {python_floor}`" in README


@pytest.mark.parametrize("page", [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *DOCS], ids=lambda path: path.name)
def test_relative_links_resolve(page):
    """Every relative link of the README, ARCHITECTURE.md and docs/ names an existing file (and heading)."""
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#:\s]+)(?:#([^)\s]+))?\)", text):
        path, anchor = target
        resolved = (page.parent / path).resolve()
        assert resolved.exists(), f"{page.name}: {path}"
        if anchor and resolved.suffix == ".md":
            assert anchor in heading_anchors(resolved.read_text(encoding="utf-8")), f"{page.name}: {path}#{anchor}"


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_readme_python_examples_run(tmp_path, monkeypatch):
    """The README's Python blocks, run in order in one namespace, against a tiny digits-sized pipeline saved at the
    path the README uses (runs/digits)."""
    DDPMPlusPipeline(unet=digits_unet(), scheduler=DDPMPlusScheduler()).save_pretrained(tmp_path / "runs" / "digits")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    blocks = fenced_blocks(README, "python")
    assert len(blocks) >= 3
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README's own examples
    assert (tmp_path / "saved" / "model_index.json").is_file()
    assert namespace["estimate"].mean_standard_error > 0


def test_readme_cli_commands_parse():
    """Every `ddpm-plus` command the README shows, plainly or under `accelerate launch -m ddpm_plus.cli`, is accepted
    by the real parser; so is every training command."""
    from ddpm_plus.cli import build_parser
    from ddpm_plus.training import parse_args

    commands = readme_shown_commands("ddpm-plus", "ddpm_plus.cli")
    assert len(commands) >= 6 and any("fid" in arguments for arguments in commands)
    for arguments in commands:
        parsed = build_parser().parse_args(arguments)
        assert parsed.command == arguments[0]
    training = readme_shown_commands("train_scripts/train.py")
    assert any("--eval_fid_every" in arguments for arguments in training)
    for arguments in training:
        assert parse_args(arguments).output_dir


def test_math_references_point_at_sections_of_docs_math():
    """Docstrings cite docs/math.md by section title; each title is a heading there, and no other math file."""
    import ddpm_plus

    headings = set(re.findall(r"^#+ (.+)$", (ROOT / "docs" / "math.md").read_text(encoding="utf-8"), re.MULTILINE))
    code = [*Path(ddpm_plus.__file__).parent.rglob("*.py"), *(ROOT / "tests").glob("*.py"), ROOT / "README.md", *DOCS]
    cited = set()
    for path in code:
        text = path.read_text(encoding="utf-8")
        assert "MATH" + ".md" not in text, path  # (spelled so that this file does not match itself)
        cited |= set(re.findall(r'docs/math\.md, "([^"]+)"', text.replace("\n", " ")))
    assert cited and cited <= headings, cited - headings
