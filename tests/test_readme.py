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


def test_ci_runs_exactly_the_readme_test_command():
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci_lines[-1] == readme_commands()[1]


def test_readme_contains_the_tested_swap_snippet():
    snippet = (ROOT / "tests" / "snippets" / "swap_scheduler.py").read_text(encoding="utf-8").strip()
    assert snippet in README
