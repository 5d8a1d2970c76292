"""The README's shell blocks, as a program: ``tests/integration/test_readme.py`` runs them.

Every fenced ``sh`` block of ``README.md`` belongs to the ``##`` section it sits in, and a section
is run as one shell session (blocks in order, ``set -euo pipefail``, starting in the clone, the
way a reader types them into one terminal). A block is left out only when the line just before
its fence says so, with the reason::

    <!-- readme-test: skip (the test suite itself) -->

Nothing else is rewritten: ports, paths and commands run as written. A section runs in its own
network namespace (so the README's fixed ports never meet another test's) with its own ``HOME``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["README", "Block", "Section", "sections"]

README = Path(__file__).resolve().parents[1] / "README.md"

_FENCE = re.compile(r"^```(\w*)\s*$")
_SKIP = re.compile(r"^<!--\s*readme-test:\s*skip\s*\((?P<why>[^)]+)\)\s*-->\s*$")


@dataclass
class Block:
    """One fenced block: its language, text, first line number and, when left out, why."""

    lang: str
    text: str
    line: int
    skip: str | None = None


@dataclass
class Section:
    """A ``##`` section and its shell blocks."""

    title: str
    blocks: list[Block] = field(default_factory=list)

    @property
    def runnable(self) -> list[Block]:
        return [b for b in self.blocks if b.lang == "sh" and b.skip is None]

    def script(self) -> str:
        """The section's runnable blocks as one bash program, each headed by its README line."""
        parts = [f"# README.md line {b.line}\n{b.text}" for b in self.runnable]
        return "set -euo pipefail\n" + "\n".join(parts)


def sections(path: Path = README) -> dict[str, Section]:
    """Every ``##`` section of the README with its fenced blocks (nested ``###`` stay in their ``##``)."""
    out: dict[str, Section] = {}
    current = Section("(preamble)")
    out[current.title] = current
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            current = Section(line[3:].strip())
            out[current.title] = current
        m = _FENCE.match(line.strip()) if line.lstrip().startswith("```") else None
        if m is not None:
            start, body = i + 1, []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                body.append(lines[i])
                i += 1
            indent = len(line) - len(line.lstrip())
            text = "\n".join(b[indent:] if b[:indent].isspace() else b for b in body)
            prev = next((lines[j].strip() for j in range(start - 2, -1, -1) if lines[j].strip()), "")
            skip = _SKIP.match(prev)
            current.blocks.append(Block(m.group(1), text, start + 1, skip.group("why") if skip else None))
        i += 1
    return out
