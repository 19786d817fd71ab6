"""The F1-vs-p50 trade-off plot of a speed table: its Pareto front, files and offline HTML."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest

from qa_distill.errors import DataError
from qa_distill.speedtest.tradeoff import pareto_front, plot_speed_table, tradeoff_stem, write_tradeoff

from .conftest import assert_offline_html

# rows of a speed table: (model, backend, p50_ms, f1)
ROWS = [
    ("teacher", "fp32", 26.0, 68.5),
    ("teacher", "int8", 9.3, 68.4),
    ("student", "fp32", 13.4, 45.8),  # slower and worse than distilled int8: dominated
    ("distilled", "int8", 5.3, 51.4),
    ("distilled", "bf16", 6.3, 51.9),
    ("distilled", "fp32-maxpad", 20.1, 51.9),  # as good as bf16 but slower: dominated
]


@pytest.fixture()
def table() -> pd.DataFrame:
    frame = pd.DataFrame(ROWS, columns=["model", "backend", "p50_ms", "f1"])
    return frame.assign(cpu="AMD EPYC (family 26 model 2, Zen 5)", questions=1000, threads=2)


def test_pareto_front_keeps_the_points_nothing_beats_on_both(table):
    front = pareto_front(table)
    assert list(zip(front["model"], front["backend"], strict=True)) == [
        ("distilled", "int8"), ("distilled", "bf16"), ("teacher", "int8"), ("teacher", "fp32"),
    ]


def test_plot_files_and_offline_html(table, tmp_path):
    png, html = write_tradeoff(table, tmp_path / "plots" / "cpu-tradeoff")
    assert (png.name, html.name) == ("cpu-tradeoff.png", "cpu-tradeoff.html")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_offline_html(html)
    page = html.read_text()
    assert all(model in page for model in ("teacher", "student", "distilled", "Pareto front"))
    assert "AMD EPYC (family 26 model 2, Zen 5), 1000 questions, 2 threads" in page  # which CPU


def test_close_points_are_numbered_and_listed_beside_the_plot_with_legends_outside_it(table, tmp_path):
    import matplotlib.pyplot as plt

    from qa_distill.speedtest.tradeoff import _figure, backend_legend, pareto_front

    close = pd.concat([table, pd.DataFrame([("distilled", "onnx-int8", 5.35, 51.35)], columns=list(table.columns[:4]))])
    figure = _figure(close, pareto_front(close), "a CPU")
    plot, side, listing = figure.axes
    assert not plot.get_legend()  # nothing hides a point
    labels = [t.get_text() for t in plot.texts]
    assert sorted(labels, key=int) == [str(n) for n in range(1, len(close) + 1)]
    cells = {(r, c): cell.get_text().get_text() for (r, c), cell in listing.tables[0].get_celld().items()}
    rows = [[cells[(r, c)] for c in range(5)] for r in range(1, len(close) + 1)]
    assert rows[0] == ["1", "distilled", "int8", "5.30", "51.40"] and rows[1][2] == "onnx-int8"  # by p50
    legend = [t.get_text() for t in side.get_legend().get_texts()]
    assert legend[:4] == ["teacher", "student", "distilled", "Pareto front"]
    assert "onnx-int8 (int8, onnxruntime)" in legend and "fp32-maxpad (fp32, padded to max_length, compiled)" in legend
    plt.close(figure)
    assert [shape for _, shape, _ in backend_legend(["int8", "hf-pipeline", "int8"])] == ["D", "X"]
    html = write_tradeoff(close, tmp_path / "close")[1].read_text()
    assert "shape: backend" in html and "onnx-int8 (int8, onnxruntime)" in html


def test_plot_of_a_written_speed_table_is_named_after_it_and_logged(table, tmp_path, tracking_uri):
    csv = tmp_path / "cpu-speed.csv"
    table.to_csv(csv, index=False)
    assert tradeoff_stem(tmp_path / "paper-arch-speed") == tmp_path / "paper-arch-tradeoff"
    assert tradeoff_stem(tmp_path / "timings") == tmp_path / "timings-tradeoff"
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("plots")
    with mlflow.start_run() as parent, mlflow.start_run(nested=True) as child:
        paths = plot_speed_table(csv)
    assert [p.name for p in paths] == ["cpu-tradeoff.png", "cpu-tradeoff.html"]
    for run in (parent, child):
        logged = {a.path for a in mlflow.artifacts.list_artifacts(run_id=run.info.run_id)}
        assert logged == {"cpu-tradeoff.png", "cpu-tradeoff.html"}


def test_bad_speed_tables_are_clear_errors(table, tmp_path):
    with pytest.raises(DataError, match="no such speed table"):
        plot_speed_table(tmp_path / "missing-speed.csv")
    with pytest.raises(DataError, match=r"columns \['f1'\]"):
        write_tradeoff(table.drop(columns="f1"), tmp_path / "x")
    with pytest.raises(DataError, match="no rows"):
        write_tradeoff(table.iloc[0:0], Path(tmp_path / "x"))
