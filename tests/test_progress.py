"""Progress lines: step/total, rate and ETA at most every N seconds, a bar on a terminal, and the
lines a tiny training prints from start to end."""

from __future__ import annotations

import io
import re

import mlflow
import pytest

from qa_distill.recipes import load_config
from qa_distill.runtime import progress as progress_module
from qa_distill.runtime.hardware import cpu_name
from qa_distill.runtime.progress import Progress, announce
from qa_distill.training.runs import run_finetune


class Clock:
    """time.monotonic under the test's control."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", fake)
    return fake


def test_plain_lines_at_most_every_n_seconds_with_rate_and_eta(clock):
    out = io.StringIO()  # not a terminal: plain lines
    progress = Progress("training", 100, unit="steps", every=60, done=10, stream=out)  # resumed at 10
    for _ in range(9):  # 9 steps, 10 s each: one line, at 60 s
        clock.now += 10
        progress.update(1)
    assert out.getvalue().splitlines() == [
        "training: 16/100 steps (16%), 0.1 steps/s, elapsed 0:01:00, ETA 0:14:00"
    ]
    clock.now += 20  # 50 s since the last line: none yet
    progress.advance_to(30)
    assert len(out.getvalue().splitlines()) == 1
    progress.close()  # the end is always shown
    last = "training: 30/100 steps (30%), 0.182 steps/s, elapsed 0:01:50, ETA 0:06:25"  # 70 steps at 20/110 a s
    assert out.getvalue().splitlines()[1:] == [last]
    progress.close()  # nothing new: no second copy
    assert len(out.getvalue().splitlines()) == 2


def test_nothing_done_yet_has_no_eta(clock):
    out = io.StringIO()
    Progress("teacher logits", 50, unit="windows", stream=out).close()
    assert out.getvalue() == "teacher logits: 0/50 windows (0%), 0 windows/s, elapsed 0:00:00, ETA unknown\n"


def test_a_terminal_gets_a_bar_instead_of_lines():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    with Progress("speed test", 4, unit="questions", every=0, stream=out) as progress:
        progress.update(4)
    assert "speed test: 100%" in out.getvalue() and "4/4" in out.getvalue()
    assert "ETA" not in out.getvalue()  # tqdm's own format, not the plain line


def test_announce_names_device_cpu_precision_and_threads():
    out = io.StringIO()
    line = announce("cpu-distill", "cpu", precision="bf16", threads=2, stream=out)
    assert line == f"cpu-distill: device cpu ({cpu_name()}), precision bf16, 2 threads"
    assert out.getvalue() == line + "\n"
    assert announce("x", "cuda:0", precision="fp16", threads=8,
                    stream=out) == "x: device cuda:0, precision fp16, 8 threads"


@pytest.mark.slow
def test_a_tiny_training_reports_every_stage_and_logs_its_data(tmp_path, tracking_uri, dev_sample, tiny_bert, capfd):
    overrides = ["data.max_length=96", "data.doc_stride=32", "training.epochs=1", "training.batch_size=8",
                 "training.eval_batch_size=32", "training.precision=fp32", "training.threads=1",
                 "training.progress_seconds=0", f"model.name={tiny_bert}", f"data.cache_dir={tmp_path / 'cache'}"]
    config = load_config("cpu", "teacher", overrides=overrides, explicit={"data.data": str(dev_sample)},
                         output_dir=str(tmp_path / "teacher"))
    result = run_finetune(config)
    err = capfd.readouterr().err
    inputs = mlflow.get_run(result["run_id"]).inputs.dataset_inputs
    assert sorted((i.tags[0].value, i.dataset.name) for i in inputs) == [
        ("evaluation", "dev-sample.json"), ("training", "train-sample.json")]
    assert f"cpu-teacher: device cpu ({cpu_name()}), precision fp32, 1 threads" in err
    rate_eta = r", [\d.e+-]+ \w+/s, elapsed \d+:\d\d:\d\d, ETA (\d+:\d\d:\d\d|unknown)$"
    finals = {}
    for what, unit in (("tokenising train windows", "questions"), ("tokenising eval windows", "questions"),
                       ("training", "steps"), ("evaluation", "batches")):
        lines = re.findall(rf"^{what}: (\d+)/(\d+) {unit} \(\d+%\){rate_eta}", err, re.MULTILINE)
        assert lines, f"no {what} line in:\n{err}"
        finals[what] = lines[-1][:2]
        assert finals[what][0] == finals[what][1]  # the last line: all done
    assert int(finals["training"][1]) > 1
