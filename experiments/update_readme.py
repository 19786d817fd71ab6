"""Fill the tables of README.md, docs/main.md and experiments/results/README.md from the committed results, so
that neither page shows a figure the project's commands did not write.

    python experiments/update_readme.py

Between `<!-- table:NAME -->` and `<!-- /table -->` goes experiments/results/NAME.md whole;
between `<!-- short:NAME -->` and `<!-- /table -->` a few columns of a committed CSV (`SHORT`
below), followed by the CPU that timed them, so README's front page stays narrow; between
`<!-- architecture -->` and `<!-- /architecture -->` the package's layers as pyproject.toml's
import-linter contract states them, each module or sub-package with its docstring's first sentence.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    raise SystemExit("update_readme: needs Python 3.11 or later (tomllib)") from None

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "qa_distill"
RESULTS = ROOT / "experiments" / "results"
PAGES = (ROOT / "README.md", RESULTS / "README.md", ROOT / "docs" / "main.md")
MARKER = re.compile(r"(<!-- (?P<kind>table|short):(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)
ARCHITECTURE = re.compile(r"(<!-- architecture -->\n).*?(<!-- /architecture -->)", re.S)
FORMATS = {"size_mb": ".1f", "questions_per_s": ".1f"}  # every other float: .2f, as tables.py writes


@dataclass(frozen=True)
class Short:
    """Columns of `<csv>.csv` (rows kept where `where[column]` holds their value); the CPU comes
    from the CSV's `cpu` column, or, where it has none, from `cpu_from`'s rows of the same `version`."""

    csv: str
    columns: tuple[str, ...]
    where: dict[str, tuple[str, ...]] = field(default_factory=dict)
    cpu_from: str | None = None


RECIPE_COLUMNS = ("model", "exact_match", "f1", "train_minutes", "version", "fp32_p50_ms", "int8_p50_ms")
SHORT = {
    "cpu": Short("cpu", RECIPE_COLUMNS, cpu_from="cpu-speed"),
    "gpu": Short("gpu", RECIPE_COLUMNS, cpu_from="gpu-speed"),
    **{name: Short(name, ("model", "exact_match", "f1", "train_questions", "train_minutes", "fp32_p50_ms"))
       for name in ("cpu-main-60min-zen3", "cpu-main-60min-zen5")},
    "cpu-latency": Short(
        "cpu-speed",
        ("backend", "p50_ms", "p90_ms", "questions_per_s", "f1", "size_mb", "speedup_vs_teacher_hf"),
        where={"model": ("distilled",)},
    ),
}


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def timed_on(df: pd.DataFrame, short: Short) -> list[str]:
    """The CPUs that timed the rows of `df`, in order of first appearance."""
    if "cpu" in df:
        return list(dict.fromkeys(df["cpu"].dropna()))
    source = RESULTS / f"{short.cpu_from}.csv" if short.cpu_from else None
    if source is None or not source.exists() or "version" not in df:
        return []
    speed = pd.read_csv(source)
    return list(dict.fromkeys(speed.loc[speed["version"].isin(df["version"]), "cpu"].dropna()))


def short_table(name: str) -> str:
    """The short table `name` as Markdown, with the line that says where it comes from."""
    if name not in SHORT:
        raise SystemExit(f"update_readme: no short table named {name!r} (known: {', '.join(SHORT)})")
    short = SHORT[name]
    csv = RESULTS / f"{short.csv}.csv"
    if not csv.exists():
        return f"(not yet produced: {relative(csv)})\n"
    df = pd.read_csv(csv)
    missing = [c for c in (*short.columns, *short.where) if c not in df]
    if missing:
        raise SystemExit(f"update_readme: {relative(csv)} has no column {', '.join(missing)}")
    for column, values in short.where.items():
        df = df[df[column].isin(values)]
    cpus = timed_on(df, short)
    df = df[list(short.columns)]
    floatfmt = [FORMATS.get(c, ".2f") for c in df.columns]
    source = f"From `{relative(csv)}`" + (f"; timed on {' and '.join(cpus)}." if cpus else ".")
    return f"{df.to_markdown(index=False, floatfmt=floatfmt)}\n\n{source}\n"


def full_table(name: str) -> str:
    table = RESULTS / f"{name}.md"
    return table.read_text() if table.exists() else f"(not yet produced: {relative(table)})\n"


def fill(match: re.Match) -> str:
    body = short_table(match["name"]) if match["kind"] == "short" else full_table(match["name"])
    return f"{match.group(1)}{body}{match.group(5)}"


def summary(path: Path) -> str:
    """The first sentence of a module's docstring, on one line."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    paragraph = " ".join(doc.split("\n\n")[0].split())
    return re.split(r"(?<=\.)\s", paragraph, maxsplit=1)[0].rstrip(".").replace("|", "\\|")


def architecture() -> str:
    """One row per module or sub-package of the layers contract, highest first."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    contract = next(c for c in contracts if c["type"] == "layers")
    rows = ["| layer | module or package | what it holds |", "|---:|:---|:---|"]
    for number, layer in enumerate(contract["layers"], start=1):
        for name in (part.strip().removeprefix("qa_distill.") for part in layer.split("|")):
            package = PACKAGE / name
            if package.is_dir():
                modules = ", ".join(sorted(p.stem for p in package.glob("*.py") if p.stem != "__init__"))
                rows.append(f"| {number} | `{name}/` ({modules}) | {summary(package / '__init__.py')} |")
            else:
                rows.append(f"| {number} | `{name}` | {summary(PACKAGE / f'{name}.py')} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    for page in PAGES:
        text = MARKER.sub(fill, page.read_text())
        page.write_text(ARCHITECTURE.sub(lambda m: f"{m.group(1)}{architecture()}{m.group(2)}", text))


if __name__ == "__main__":
    main()
