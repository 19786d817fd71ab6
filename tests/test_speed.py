"""The speed test on a tiny random BERT and a few real dev questions (seconds, no GPU)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from transformers import BertForQuestionAnswering, DataCollatorWithPadding

from qa_distill.config import DataConfig, SpeedConfig, TrackingConfig
from qa_distill.data.features import build_features
from qa_distill.data.metrics import squad_scores
from qa_distill.data.squad import load_questions, load_split
from qa_distill.errors import ConfigError, ModelError
from qa_distill.inference.predictor import QAPredictor, predict
from qa_distill.models import load_qa_model, random_weight_model
from qa_distill.reporting.tables import write_tables
from qa_distill.runtime.hardware import cpu_name
from qa_distill.speedtest import speed
from qa_distill.speedtest.hf_baseline import HFPipelineBaseline
from qa_distill.speedtest.speed import compile_plan

from .conftest import DEV_JSON, assert_offline_html, minilm_path, save_tiny

DEV = str(DEV_JSON)


pytestmark = pytest.mark.usefixtures("compiled_models")  # the speed test times compiled backends


@pytest.fixture(scope="module", autouse=True)
def one_thread(compiled_models):
    """Leave the machine's other core alone; restore torch's setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A seeded 2-layer random BERT: the agreement thresholds below were measured on it."""
    return save_tiny("bert", tmp_path_factory.mktemp("tiny"), seed=0, layers=2)


@pytest.fixture(scope="module")
def questions() -> list[dict]:
    return load_questions(DEV, 8, seed=0)


def _answers(answerer, questions: list[dict]) -> list[str]:
    return answerer.answer_batch([q["question"] for q in questions],
                                 [q["context"] for q in questions])


def _same(a: list[str], b: list[str]) -> int:
    return sum(x == y for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def fp32_answers(tiny_model, questions) -> list[str]:
    return _answers(QAPredictor(tiny_model, backend="fp32"), questions)


def test_padding_and_bf16_keep_the_fp32_answers(tiny_model, questions, fp32_answers):
    # Padding to max_length only adds masked positions: the answers must not move at all.
    assert _answers(QAPredictor(tiny_model, backend="fp32-maxpad"), questions) == fp32_answers
    # bf16 keeps 8 mantissa bits; a random model's best spans can win by less than that, so a
    # few flips are legitimate, but most answers must survive.
    bf16 = _answers(QAPredictor(tiny_model, backend="bf16"), questions)
    assert _same(bf16, fp32_answers) >= 0.75 * len(questions)


def test_int8_answers_every_question(tiny_model, questions, fp32_answers):
    # Random weights are not a trained model (int8's F1 on trained ones is experiments/backend_accuracy.py's):
    # here it must answer everything, and not be noise (half the answers the same as fp32).
    int8 = _answers(QAPredictor(tiny_model, backend="int8"), questions)
    assert all(a and a in q["context"] for a, q in zip(int8, questions, strict=True))
    assert _same(int8, fp32_answers) >= len(questions) / 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory, dev_sample) -> tuple[str, list[dict]]:
    """MiniLM cut to 2 of its 6 layers, fine-tuned for seconds (plain AdamW) on 134 questions
    until it answers many of them: quantisation error only shows on a model that has learned
    something. Returns the saved model and those questions (one changed answer moves F1 < 1)."""
    split = load_split(DataConfig(data=str(dev_sample)), "train")
    torch.manual_seed(0)  # the new QA head, dropout and shuffling
    loaded = load_qa_model(minilm_path(), layer_stride=3)
    model, tokenizer = loaded.model, loaded.tokenizer
    windows = build_features(split, tokenizer, max_length=192, doc_stride=64, kind="train",
                             cache=str(tmp_path_factory.mktemp("features")))
    windows = list(windows.remove_columns("length"))
    pad = DataCollatorWithPadding(tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    model.train()
    for _ in range(4):
        for batch in torch.utils.data.DataLoader(windows, batch_size=8, shuffle=True, collate_fn=pad):
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    out = tmp_path_factory.mktemp("trained")
    model.eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out), load_questions(dev_sample / "train-sample.json", len(split.dataset))


@pytest.mark.slow
def test_fast_backends_keep_a_trained_models_f1(trained):
    path, questions = trained
    gold = {q["id"]: q["answers"] for q in questions}
    answers = {b: _answers(QAPredictor(path, backend=b), questions) for b in ("fp32", "fp32-maxpad", "bf16", "int8")}
    f1 = {b: squad_scores(gold, dict(zip(gold, a, strict=True)))["f1"] for b, a in answers.items()}
    assert f1["fp32"] > 30  # it learned (45 here): a random head scores near 0
    assert answers["fp32-maxpad"] == answers["fp32"]
    assert abs(f1["bf16"] - f1["fp32"]) <= 2
    # int8 must not lose more than 2 F1. It changes 12 of these 134 answers, and here gains 2.0
    # F1 (one answer moves F1 by up to 0.75): noise of a small set, so the bounds are on the loss
    # and on how many answers move.
    assert f1["fp32"] - f1["int8"] <= 2
    assert _same(answers["int8"], answers["fp32"]) >= 0.85 * len(questions)


def test_hf_pipeline_baseline(tiny_model, questions, fp32_answers):
    default = HFPipelineBaseline(tiny_model)
    assert (default.max_length, default.stride, default.max_answer_len) == (384, 128, 15)
    answers = _answers(default, questions)
    assert len(answers) == len(questions) and all(answers)
    # Word alignment only widens the span it is given to whole words.
    by_offsets = _answers(HFPipelineBaseline(tiny_model, align_to_words=False), questions)
    for wide, narrow in zip(answers, by_offsets, strict=True):
        assert narrow in wide
    # Given our predictor's answer length and offsets, the v4 scoring (per-window softmax
    # product, full span grid) picks the same span as ours (logit sum of the top-20 starts and
    # ends) inside one window; these questions fit in one window but allow one miss anyway.
    matched = HFPipelineBaseline(tiny_model, max_answer_len=30, align_to_words=False)
    assert _same(_answers(matched, questions), fp32_answers) >= len(questions) - 1


def test_timed_figures_and_scores(tiny_model, questions, fp32_answers):
    results = speed.time_models(speed.check_models({"tiny": tiny_model}), questions,
                                SpeedConfig(backends=("fp32", "int8", "onnx-int8"), threads=1, warmup=2, batch_size=3))
    assert [(r.model, r.backend) for r in results] == [
        ("tiny", "hf-pipeline"), ("tiny", "fp32"), ("tiny", "int8"), ("tiny", "onnx-int8")
    ]
    table = speed.results_table(results)
    gold = {q["id"]: q["answers"] for q in questions}
    model = BertForQuestionAnswering.from_pretrained(tiny_model)
    params = sum(p.numel() for p in model.parameters())
    for result, row in zip(results, table.to_dict("records"), strict=True):
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["questions_per_s"] > 0
        assert (row["questions"], row["batch_size"], row["threads"]) == (8, 3, 1)
        assert row["params"] == params
        assert set(result.answers) == set(gold)
        scores = squad_scores(gold, result.answers)
        assert (row["exact_match"], row["f1"]) == (scores["exact_match"], scores["f1"])
        assert row["speedup_vs_hf"] == pytest.approx(table["p50_ms"][0] / row["p50_ms"])
    assert [results[1].answers[q["id"]] for q in questions] == fp32_answers
    on_disk = (Path(tiny_model) / "model.safetensors").stat().st_size / 1e6
    assert table["size_mb"][0] == table["size_mb"][1] == pytest.approx(on_disk)
    assert 0 < table["size_mb"][2] < on_disk  # int8 linear layers (embeddings stay fp32)
    # ONNX Runtime's int8 is the graph file it runs (here about the weights' size: the embeddings,
    # float, are most of a 32-wide model)
    onnx_file = QAPredictor(tiny_model, backend="onnx-int8").forward.path  # the cached graph the test ran
    assert table["size_mb"][3] == pytest.approx(onnx_file.stat().st_size / 1e6)
    assert "speedup_vs_teacher_hf" not in table


def test_speedup_vs_teacher_and_tables(tiny_model, questions, tmp_path):
    table = speed.results_table(speed.time_models(
        speed.check_models({"teacher": tiny_model, "student": tiny_model}), questions[:2],
        SpeedConfig(backends=("fp32",), threads=1, warmup=0),
    ))
    teacher_hf = table.query("model == 'teacher' and backend == 'hf-pipeline'")["p50_ms"].item()
    assert table["speedup_vs_teacher_hf"].tolist() == pytest.approx(
        (teacher_hf / table["p50_ms"]).tolist()
    )
    csv, md = write_tables(table, tmp_path / "sub" / "speed")
    assert (csv.name, md.name) == ("speed.csv", "speed.md")
    assert pd.read_csv(csv)["p50_ms"].tolist() == pytest.approx(table["p50_ms"].tolist())
    lines = md.read_text().splitlines()
    header, _, first, *rest = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert header == list(table.columns) and len(rest) == len(table) - 1
    assert first[header.index("p50_ms")] == f"{table['p50_ms'][0]:.2f}"


def register_twice(model_dir: str, name: str) -> None:
    """Versions 1 and 2 of `name`, both the HF directory logged by one run (an MLflow model of
    ours keeps the same files under artifacts/; loading finds config.json either way)."""
    with mlflow.start_run() as run:
        mlflow.log_artifacts(model_dir, "model")
    client = mlflow.MlflowClient()
    client.create_registered_model(name)
    for _ in range(2):
        client.create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id)


@pytest.mark.slow
def test_run_speedtest_pins_latest_and_tags_the_version_it_timed(tiny_model, tmp_path, monkeypatch, tracking_uri):
    mlflow.set_tracking_uri(tracking_uri)  # an experiment with artifacts in tmp_path, not mlruns/
    mlflow.create_experiment("speed-test", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment("speed-test")
    register_twice(tiny_model, "tiny-registered")
    tracking = TrackingConfig(tracking_uri=tracking_uri, experiment="speed-test")
    df = speed.run_speedtest(SpeedConfig(
        models=["tiny=models:/tiny-registered/latest", f"local={tiny_model}"], dev_json=DEV, questions=3,
        backends=("fp32",), threads=1, batch_size=2, output=str(tmp_path / "out" / "cpu-speed"), warmup=1,
        run_name="speed-run",
    ), tracking=tracking)
    assert df[["model", "version", "backend"]].values.tolist() == [
        ["tiny", "tiny-registered/2", "hf-pipeline"], ["tiny", "tiny-registered/2", "fp32"],
        ["local", "", "hf-pipeline"], ["local", "", "fp32"],
    ]
    assert set(df["cpu"]) == {cpu_name()}  # every table names its CPU
    (run,) = mlflow.search_runs(experiment_names=["speed-test"], output_format="list",
                                filter_string="attributes.run_name = 'speed-run'")
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["speed.questions"] == "3" and params["speed.model.local"] == tiny_model
    assert params["speed.model.tiny"] == "models:/tiny-registered/2"  # the number, not latest
    assert run.data.metrics["tiny.fp32.p50_ms"] == pytest.approx(df["p50_ms"][1])
    assert run.data.metrics["local.hf-pipeline.f1"] == pytest.approx(df["f1"][2])
    assert not [m for m in run.data.metrics if m.endswith(("size_mb", "speedup_vs_hf"))]  # in the table

    client = mlflow.MlflowClient()
    tags = client.get_model_version("tiny-registered", "2").tags
    for i, backend in ((0, "hf-pipeline"), (1, "fp32")):
        for figure in ("p50_ms", "p90_ms", "p99_ms", "questions_per_s", "exact_match", "f1"):
            assert float(tags[f"latency.{backend}.{figure}"]) == pytest.approx(df[figure][i], rel=1e-5)
    assert tags["latency.cpu"] == params["speed.cpu"] and tags["latency.threads"] == "1"
    assert tags["latency.run_id"] == run.info.run_id
    assert not client.get_model_version("tiny-registered", "1").tags  # not the version timed

    logged = {a.path for a in mlflow.artifacts.list_artifacts(run_id=run.info.run_id)}
    assert logged == {"cpu-speed.csv", "cpu-speed.md", "cpu-speed-answers.json", "cpu-tradeoff.png",
                      "cpu-tradeoff.html"}
    assert_offline_html(tmp_path / "out" / "cpu-tradeoff.html")

    # Under `mlflow run` as a step of a workflow: the run it created gets the figures, and the
    # workflow's parent run the plot too.
    parent = client.create_run(run.info.experiment_id)
    created = client.create_run(run.info.experiment_id, tags={"mlflow.parentRunId": parent.info.run_id})
    monkeypatch.setenv("MLFLOW_RUN_ID", created.info.run_id)
    speed.run_speedtest(SpeedConfig(
        models=[tiny_model], dev_json=DEV, questions=1, backends=("int8",), threads=1, warmup=0,
        output=str(tmp_path / "out" / "again"), hf_baseline=False,
    ), tracking=tracking)
    resumed = mlflow.get_run(created.info.run_id)
    assert resumed.info.status == "FINISHED"
    assert f"{Path(tiny_model).name}.int8.f1" in resumed.data.metrics  # named after its dir
    on_parent = {a.path for a in mlflow.artifacts.list_artifacts(run_id=parent.info.run_id)}
    assert on_parent == {"again-tradeoff.png", "again-tradeoff.html"}


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"backends": ("fp32", "fp64")}, ConfigError, "fp64"),
        ({"questions": 0}, ConfigError, "questions must be >= 1, got 0"),
        ({"threads": 0}, ConfigError, "threads"),
        ({"models": ["teacher=/nonexistent/model"]}, ModelError, "/nonexistent/model"),
        ({"models": ["x/m", "y/m"]}, ConfigError, "two models named 'm'"),
    ],
)
def test_bad_input_fails_before_timing(tiny_model, tmp_path, monkeypatch, change, error, message):
    def no_timing(*args, **kwargs):
        raise AssertionError("timed before the input was checked")

    monkeypatch.setattr(speed, "measure", no_timing)
    monkeypatch.setattr(speed, "setup_tracking", no_timing)
    settings = {"models": [tiny_model], "dev_json": DEV, "questions": 2}
    with pytest.raises(error, match=message):
        speed.run_speedtest(SpeedConfig(**(settings | change)),
                            tracking=TrackingConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"))


def test_parse_models():
    assert speed.parse_models(["teacher=outputs/cpu/teacher", "outputs/cpu/student/"]) == {
        "teacher": "outputs/cpu/teacher", "student": "outputs/cpu/student/"
    }
    assert speed.parse_models(["runs:/abc/model"]) == {"model": "runs:/abc/model"}


@pytest.mark.slow
def test_random_weight_model_is_distilbert_base(tmp_path, questions):
    path = random_weight_model("distilbert-base-uncased", tmp_path / "distilbert")
    predictor = QAPredictor(path)
    config = predictor.model.config
    assert (config.model_type, config.n_layers, config.dim, config.vocab_size) == (
        "distilbert", 6, 768, 30522
    )
    assert "token_type_ids" not in predictor.input_names
    q = questions[0]
    for answerer in (predictor, HFPipelineBaseline(path)):
        answer = answerer.answer(q["question"], q["context"])
        assert answer and answer in q["context"]
    with pytest.raises(ConfigError, match="roberta-base"):
        random_weight_model("roberta-base", tmp_path / "roberta")


def test_predict(tiny_model, questions, fp32_answers):
    q = questions[0]
    assert predict(tiny_model, question=q["question"], context=q["context"]) == fp32_answers[0]


def test_compile_plan_counts_one_graph_per_model_and_precision_and_times_it_from_this_cpus_builds(
        tmp_path, monkeypatch):
    monkeypatch.setenv("QA_DISTILL_CACHE", str(tmp_path))
    monkeypatch.setenv("QA_DISTILL_COMPILE", "1")
    cache = tmp_path / "compiled"
    cache.mkdir()
    for key, seconds in (("a", 100.0), ("b", 120.0), ("c", 500.0)):  # the median: 120 s a build
        (cache / f"{key}.pt2").write_bytes(b"")
        (cache / f"{key}.json").write_text(json.dumps({"key": key, "seconds": seconds, "cpu": cpu_name()}))
    plan = compile_plan(3, ["fp32", "fp32-maxpad", "bf16"])
    assert "3 models x 3 backends = 6 compiled graphs (2 per model: aotinductor/bf16, aotinductor/fp32)" in plan
    assert f"about 12 min on {cpu_name()}" in plan
    monkeypatch.setenv("QA_DISTILL_COMPILE", "0")
    assert "nothing to compile" in compile_plan(3, ["fp32", "bf16"])
