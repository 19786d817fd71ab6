"""The accuracy/latency trade-off of a speed table: F1 against p50 latency, one point per model
and backend, as a PNG (matplotlib) and a self-contained HTML (plotly, its JavaScript inline, so
the page works offline).

The dashed line joins the Pareto front: the points no other point beats on both F1 and p50. A
point's colour is its model; its shape is its backend's precision (a square: padded to
max_length; an X: the transformers pipeline), hollow for a runtime other than the compiled one
(`qa_distill.backends`); both legends say so. Points of one model often lie close (int8 and bf16
within a millisecond and a tenth of F1), so the PNG numbers its points and lists them in a table
beside the plot, its legends outside the axes; the HTML names each point on hover.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd

from qa_distill.backends import SPECS
from qa_distill.errors import DataError
from qa_distill.tracking.runs import log_to_run_and_parent

TITLE = "F1 against p50 latency (one question at a time, CPU)"
_MARKERS = {"fp32": "o", "bf16": "^", "int8": "D"}  # by precision
_PLOTLY_MARKERS = {"X": "x", "o": "circle", "s": "square", "^": "triangle-up", "D": "diamond"}


def marker(backend: str) -> tuple[str, bool]:
    """(matplotlib marker, filled) of a backend's points; the baseline, in no table, an X."""
    spec = SPECS.get(backend)
    if spec is None:
        return "X", True
    shape = "s" if spec.padding == "max_length" else _MARKERS[spec.precision]
    return shape, spec.runtime == "aotinductor"


def backend_legend(backends: list[str]) -> list[tuple[str, str, bool]]:
    """(label, marker, filled) of each backend, in the order given: what a point's shape means."""
    def label(backend: str) -> str:
        spec = SPECS.get(backend)
        if spec is None:
            return f"{backend} (transformers pipeline)"
        padded = ", padded to max_length" if spec.padding == "max_length" else ""
        return f"{backend} ({spec.precision}{padded}, {'compiled' if spec.runtime == 'aotinductor' else spec.runtime})"

    return [(label(b), *marker(b)) for b in dict.fromkeys(backends)]


def pareto_front(table: pd.DataFrame) -> pd.DataFrame:
    """Rows no other row beats on both figures (lower `p50_ms`, higher `f1`), fastest first."""
    rows = table.sort_values(["p50_ms", "f1"], ascending=[True, False])
    return rows[rows["f1"] > rows["f1"].cummax().shift(fill_value=float("-inf"))]


def _check(table: pd.DataFrame) -> None:
    missing = {"model", "backend", "p50_ms", "f1"} - set(table.columns)
    if missing:
        raise DataError(f"a speed table needs columns {sorted(missing)} for the trade-off plot")
    if table.empty:
        raise DataError("the speed table has no rows to plot")


def _png(table: pd.DataFrame, front: pd.DataFrame, path: Path, subtitle: str) -> None:
    import matplotlib.pyplot as plt

    figure = _figure(table, front, subtitle)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def _figure(table: pd.DataFrame, front: pd.DataFrame, subtitle: str):
    """The matplotlib figure: the plot, and beside it the legends and the numbered points' table."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    panels = plt.figure(figsize=(13, 6.5)).subplot_mosaic(
        [["plot", "legend"], ["plot", "table"]], width_ratios=(2, 1), height_ratios=(1, 1.7))
    figure, axes = panels["plot"].figure, panels["plot"]
    colours = dict(zip(table["model"].unique(), plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    rows = table.sort_values(["p50_ms", "f1"]).to_dict("records")  # numbered left to right
    for number, row in enumerate(rows, 1):
        shape, filled = marker(row["backend"])
        colour = colours.get(row["model"], "grey")
        axes.scatter(row["p50_ms"], row["f1"], marker=shape, s=60, edgecolors=colour,
                     facecolors=colour if filled else "none")
        # a number, not a name: close points keep short labels, and alternate above and below
        axes.annotate(str(number), (row["p50_ms"], row["f1"]), fontsize=8, color=colour,
                      xytext=(5, 4 if number % 2 else -10), textcoords="offset points")
    axes.plot(front["p50_ms"], front["f1"], "k--", linewidth=0.8)
    axes.set_xscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}")  # 6, 10, 20 rather than 10^1
    axes.xaxis.set_major_formatter(plain)
    axes.xaxis.set_minor_formatter(plain)
    axes.set(xlabel="p50 latency per question (ms, log scale)", ylabel="F1 on the timed questions",
             title=f"{TITLE}\n{subtitle}")
    axes.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], marker="o", linestyle="", color=c, label=m) for m, c in colours.items()]
    handles += [Line2D([], [], color="k", linestyle="--", linewidth=0.8, label="Pareto front")]
    handles += [Line2D([], [], marker=shape, linestyle="", markeredgecolor="grey",
                       markerfacecolor="grey" if filled else "none", label=text)
                for text, shape, filled in backend_legend([r["backend"] for r in rows])]
    for name in ("legend", "table"):
        panels[name].axis("off")
    panels["legend"].legend(handles=handles, loc="upper left", fontsize=8, frameon=False,
                            title="colour: model, shape: backend")
    cells = [[str(n), r["model"], r["backend"], f"{r['p50_ms']:.2f}", f"{r['f1']:.2f}"] for n, r in enumerate(rows, 1)]
    grid = panels["table"].table(cellText=cells, colLabels=["#", "model", "backend", "p50 ms", "F1"],
                                 cellLoc="left", bbox=(0, 0, 1, 1), colWidths=(0.08, 0.27, 0.3, 0.17, 0.17))
    grid.auto_set_font_size(False)
    grid.set_fontsize(8)
    return figure


def _plotly_symbol(backend: str) -> str:
    shape, filled = marker(backend)
    return _PLOTLY_MARKERS[shape] + ("" if filled else "-open")


def _html(table: pd.DataFrame, front: pd.DataFrame, path: Path, subtitle: str) -> None:
    import plotly.graph_objects as go

    figure = go.Figure()
    for model, rows in table.groupby("model", sort=False):
        figure.add_trace(go.Scatter(
            x=rows["p50_ms"], y=rows["f1"], mode="markers", name=model, text=rows["backend"],
            marker={"size": 11, "symbol": [_plotly_symbol(b) for b in rows["backend"]]},
            hovertemplate=f"{model} %{{text}}<br>p50 %{{x:.2f}} ms<br>F1 %{{y:.2f}}<extra></extra>",
        ))
    figure.add_trace(go.Scatter(x=front["p50_ms"], y=front["f1"], mode="lines", name="Pareto front",
                                line={"dash": "dash", "color": "black", "width": 1}))
    for text, _, _ in backend_legend(list(table["backend"])):  # legend entries only: what each shape means
        backend = text.split(" ")[0]
        figure.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=text, legendgroup="backends",
                                    legendgrouptitle_text="shape: backend",
                                    marker={"size": 10, "color": "grey", "symbol": _plotly_symbol(backend)}))
    figure.update_layout(title=f"{TITLE}<br><sub>{subtitle}</sub>", xaxis_type="log",
                         xaxis_title="p50 latency per question (ms, log scale)",
                         yaxis_title="F1 on the timed questions", legend_title_text="colour: model")
    figure.write_html(path, include_plotlyjs=True)


def write_tradeoff(table: pd.DataFrame, stem: Path) -> list[Path]:
    """`<stem>.png` and `<stem>.html` from a speed table (`speed.results_table` or its CSV)."""
    _check(table)
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    front = pareto_front(table)
    first = table.iloc[0]
    subtitle = ", ".join(([str(first["cpu"])] if "cpu" in table.columns else [])
                         + [f"{first[c]} {c}" for c in ("questions", "threads") if c in table.columns])
    png, html = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".html")
    _png(table, front, png, subtitle)
    _html(table, front, html, subtitle)
    return [png, html]


def tradeoff_stem(speed_stem: Path) -> Path:
    """Where a speed table's plot goes: `cpu-speed` -> `cpu-tradeoff`, any other `x` -> `x-tradeoff`."""
    speed_stem = Path(speed_stem)
    return speed_stem.with_name(speed_stem.name.removesuffix("-speed") + "-tradeoff")


def plot_speed_table(speed_csv: str | Path, *, stem: Path | None = None) -> list[Path]:
    """The trade-off plot of a written speed table (`<x>-speed.csv` -> `<x>-tradeoff.png|html`),
    logged to the active run and its parent when a run is active."""
    speed_csv = Path(speed_csv)
    if not speed_csv.exists():
        raise DataError(f"{speed_csv}: no such speed table (run `qa-distill speedtest` first)")
    paths = write_tradeoff(pd.read_csv(speed_csv), stem or tradeoff_stem(speed_csv.with_suffix("")))
    if mlflow.active_run() is not None:
        log_to_run_and_parent(paths)
    return paths
