"""Results tables as files: CSV at full precision, Markdown rounded for reading."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def write_tables(df: pd.DataFrame, stem: Path, *, formats: dict[str, str] | None = None) -> tuple[Path, Path]:
    """`<stem>.csv` and `<stem>.md`; `formats` maps a column to its Markdown number format."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv, md = stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".md")
    df.to_csv(csv, index=False)
    floatfmt = [(formats or {}).get(c, ".2f") for c in df.columns]
    md.write_text(df.to_markdown(index=False, floatfmt=floatfmt) + "\n")
    return csv, md
