"""Copy the committed results tables into README.md, between `<!-- table:NAME -->` and
`<!-- /table -->` markers, so the README shows exactly what the project's commands wrote.

    python experiments/update_readme.py
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"(<!-- table:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def fill(match: re.Match) -> str:
    table = ROOT / "experiments" / "results" / f"{match['name']}.md"
    body = table.read_text() if table.exists() else f"(not yet produced: {table.relative_to(ROOT)})\n"
    return f"{match.group(1)}{body}{match.group(4)}"


def main() -> None:
    readme = ROOT / "README.md"
    readme.write_text(MARKER.sub(fill, readme.read_text()))


if __name__ == "__main__":
    main()
