"""The README stays short, and the commands it shows exist."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"

# The subcommands `ferkit.cli` registers.
SUBCOMMANDS = {
    "data",
    "models",
    "train",
    "evaluate",
    "ensemble",
    "compare",
    "ship",
    "predict",
    "export",
    "serve",
}

FENCE = re.compile(r"^```(\w*)\s*$")


def bash_lines(text: str) -> list[str]:
    """The lines of the fenced ```bash blocks in `text`, stripped."""
    lines, lang = [], None
    for line in text.splitlines():
        fence = FENCE.match(line.strip())
        if fence:
            lang = None if lang is not None else fence.group(1)
        elif lang == "bash":
            lines.append(line.strip())
    return lines


def test_readme_is_at_most_200_lines():
    n = len(README.read_text().splitlines())
    assert n <= 200, f"README.md has {n} lines; move detail to docs/"


def test_readme_ferkit_commands_name_real_subcommands():
    commands = [line for line in bash_lines(README.read_text()) if line.startswith("ferkit ")]
    assert commands, "README.md shows no `ferkit` command in a ```bash block"
    for line in commands:
        sub = line.split()[1]
        assert sub in SUBCOMMANDS, f"README.md: `{line}` names no ferkit subcommand ({sub!r})"


def test_bash_lines_reads_only_bash_blocks():
    text = (
        "```bash\nferkit train\n```\n"
        "```text\nferkit nope\n```\n"
        "ferkit outside\n"
        "```bash\n  ferkit serve\n```\n"
    )
    assert bash_lines(text) == ["ferkit train", "ferkit serve"]
