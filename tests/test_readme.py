"""The README opens with the two commands, CI runs the second, and its code snippets are the tested ones."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def readme_commands() -> list[str]:
    """The first two fenced bash blocks of the README, each one line."""
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL)
    return [block.strip() for block in blocks[:2]]


def test_readme_opens_with_the_two_commands():
    train, test = readme_commands()
    first_block = README.index("```bash")
    assert README[:first_block].count("```") == 0  # nothing precedes the two commands but prose
    assert "\n" not in train and "\n" not in test
    assert train.startswith("python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0")
    assert "accelerate launch train_scripts/train.py" in train
    assert test.endswith("python -m pytest")


def test_ci_runs_the_readme_test_command_first_then_the_matrix():
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    commands = [line for line in ci_lines if line not in ("set -euo pipefail", 'cd "$(dirname "$0")/.."')]
    assert commands == [readme_commands()[1], '.venv/bin/pip install -q -e ".[matrix]" && .venv/bin/nox']


def test_readme_contains_the_tested_swap_snippet():
    snippet = (ROOT / "tests" / "snippets" / "swap_scheduler.py").read_text(encoding="utf-8").strip()
    assert snippet in README


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


def test_math_references_point_at_sections_of_docs_math():
    """Docstrings cite docs/math.md by section title; each title is a heading there, and no other math file."""
    import ddpm_plus

    headings = set(re.findall(r"^#+ (.+)$", (ROOT / "docs" / "math.md").read_text(encoding="utf-8"), re.MULTILINE))
    code = [*Path(ddpm_plus.__file__).parent.glob("*.py"), *(ROOT / "tests").glob("*.py"), ROOT / "README.md"]
    cited = set()
    for path in code:
        text = path.read_text(encoding="utf-8")
        assert "MATH" + ".md" not in text, path  # (spelled so that this file does not match itself)
        cited |= set(re.findall(r'docs/math\.md, "([^"]+)"', text.replace("\n", " ")))
    assert cited and cited <= headings, cited - headings
