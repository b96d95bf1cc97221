"""The fenced code blocks of Markdown pages, and the commands their shell blocks show."""

import re
import shlex


def fenced_blocks(text: str, language: str) -> list[str]:
    return [block.strip() for block in re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)]


def shown_commands(blocks: list[str], program: str) -> list[list[str]]:
    """The arguments of every command in the shell `blocks` that runs `program` (a command, `-m` module or script
    path), continuation lines joined, comments dropped."""
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if program in words:
                commands.append(words[words.index(program) + 1 :])
    return commands
