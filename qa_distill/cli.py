"""`qa-distill`: one subcommand per entry point. Parse, validate, call one function, print JSON."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qa_distill.config import BACKENDS, DEFAULT_DEV_JSON, TrackingConfig, check_name
from qa_distill.errors import Interrupted, QaDistillError

MODEL_SOURCES = "local dir, hub name, runs:/<id>/model or models:/<name>/<version>"


def _common(parser: argparse.ArgumentParser, output_help: str = "where the model is saved") -> None:
    parser.add_argument("--recipe", default="cpu", help="recipe name from experiments/ (cpu, paper) or a YAML file")
    parser.add_argument("--data", default=None, help="hub dataset name, or a local directory / SQuAD JSON file")
    parser.add_argument("--output-dir", default=None, help=f"{output_help} (default outputs/<recipe>/<role>)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override any recipe value, e.g. --set training.epochs=1 (repeatable; several may be "
             "given in one space-separated string)",
    )
    _experiment(parser)


def _experiment(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", default="", help="MLflow experiment (default: the recipe's "
                        "tracking.experiment, qa-distill)")


def _teacher_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", default=None, help=MODEL_SOURCES)


def _distill_args(parser: argparse.ArgumentParser) -> None:
    _teacher_arg(parser)
    parser.add_argument("--temperature", default=None, help="softmax temperature T (> 0)")
    parser.add_argument("--alpha", default=None, help="weight of the soft loss, in [0, 1]")


def _overrides(args: argparse.Namespace) -> list[str]:
    return [item for chunk in args.overrides for item in chunk.split()]


def _config(args: argparse.Namespace, role: str):
    from qa_distill.config import load_config

    return load_config(
        args.recipe, role, _overrides(args), data=args.data, output_dir=args.output_dir,
        teacher=getattr(args, "teacher", None), temperature=getattr(args, "temperature", None),
        alpha=getattr(args, "alpha", None), experiment=args.experiment,
    )


def _positive_int(text: str) -> int:
    """An argparse type: a whole number > 0 (argparse prints the one-line error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _connect_for(source: str) -> None:
    """A `runs:/` or `models:/` source is looked up in the configured tracking store."""
    from qa_distill import preflight
    from qa_distill.models import is_mlflow_uri

    if is_mlflow_uri(source):
        preflight.connect(TrackingConfig())


# Each command validates its configuration before importing the training stack (seconds of imports).
def cmd_finetune(args: argparse.Namespace) -> dict[str, Any]:
    config = _config(args, args.command)
    from qa_distill.runs import run_finetune

    return run_finetune(config)


def cmd_distill(args: argparse.Namespace) -> dict[str, Any]:
    config = _config(args, "distill")
    from qa_distill.runs import run_distill

    return run_distill(config)


def cmd_score(args: argparse.Namespace) -> dict[str, Any]:
    from qa_distill.scoring import score_files
    from qa_distill.tracking import log_result

    result = score_files(args.dataset, args.predictions)
    log_result("score", result)
    return result


def cmd_search(args: argparse.Namespace) -> dict[str, Any]:
    from qa_distill.errors import ConfigError

    if args.n_trials is None and args.timeout is None:
        raise ConfigError("give --n-trials or --timeout (or both): a study needs an end")
    config = _config(args, "distill")
    from qa_distill.search import run_search

    return run_search(
        config, args.n_trials, args.timeout, args.study_name or f"distill-{config.recipe}",
        args.storage or None, args.sampler_seed, tuple(args.temperature_range), tuple(args.alpha_range),
        args.search_lr, tuple(args.lr_range), Path(args.results_stem) if args.results_stem else None,
        not args.no_register,
    )


def _recipe_models(recipe: str) -> list[str]:
    """A recipe's registered models, named as in its results tables."""
    from qa_distill.report import ROLE_NAMES

    return [f"{name}=models:/qa-distill-{recipe}-{role}/latest" for role, name in ROLE_NAMES.items()]


def cmd_speedtest(args: argparse.Namespace) -> list[dict[str, Any]]:
    import tempfile

    from qa_distill import preflight
    from qa_distill.budgets import speed_stem
    from qa_distill.config import load_tracking, recipe_path

    run_name = check_name(args.run_name or f"{Path(args.recipe).stem}-speed", "--run-name")
    tracking = load_tracking(args.recipe, args.experiment)
    preflight.connect(tracking)
    from qa_distill.speed import run_speedtest

    models = [m for chunk in args.model for m in chunk.split()]
    with tempfile.TemporaryDirectory() as tmp:
        if args.paper_arch:
            from qa_distill.speed import random_weight_model

            models += [
                f"teacher={random_weight_model('bert-base-uncased', f'{tmp}/bert-base-uncased')}",
                f"student={random_weight_model('distilbert-base-uncased', f'{tmp}/distilbert-base-uncased')}",
            ]
        if not models:
            recipe_path(args.recipe)  # a clear error for an unknown recipe
            models = _recipe_models(args.recipe)
        backends = args.backends.split() if args.backends else None
        output = speed_stem(Path(args.recipe).stem, run_name, args.output, models, args.questions, backends)
        table = run_speedtest(
            models, args.dev_json or str(DEFAULT_DEV_JSON), args.questions, backends, args.threads,
            args.batch_size, str(output), not args.no_hf_baseline, tracking, run_name, args.warmup,
        )
    return table.to_dict("records")


def cmd_predict(args: argparse.Namespace) -> dict[str, str]:
    _connect_for(args.model)
    from qa_distill.speed import predict
    from qa_distill.tracking import log_result

    result = {"answer": predict(args.model, args.question, args.context, args.backend)}
    log_result("predict", {"model": args.model, "backend": args.backend, **result})
    return result


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from qa_distill.config import DataConfig

    data = DataConfig(data=args.data or str(DEFAULT_DEV_JSON.parent), dev_questions=args.dev_questions)
    _connect_for(args.model)
    from qa_distill.evaluate import evaluate_model
    from qa_distill.tracking import log_result

    result = evaluate_model(args.model, data, args.backend)
    predictions = result.pop("predictions")
    if args.predictions:
        Path(args.predictions).write_text(json.dumps(predictions))
    log_result("evaluate", {"model": args.model, "backend": args.backend, **result})
    return result


def cmd_report(args: argparse.Namespace) -> list[dict[str, Any]]:
    from qa_distill import preflight
    from qa_distill.config import load_tracking, recipe_path

    tracking = load_tracking(args.recipe, args.experiment)
    preflight.connect(tracking)
    from qa_distill.report import run_report

    return run_report(recipe_path(args.recipe).stem, tracking, args.output or None).to_dict("records")


def cmd_main(args: argparse.Namespace) -> dict[str, Any]:
    from qa_distill.config import WorkflowConfig
    from qa_distill.workflow import run_main

    return run_main(WorkflowConfig(
        recipe=args.recipe, data=args.data or "", overrides=" ".join(_overrides(args)),
        output_dir=args.output_dir or "", results_dir=args.results_dir, experiment=args.experiment,
        speed_questions=args.speed_questions, backends=args.backends, threads=args.threads, dev_json=args.dev_json,
    ))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qa-distill", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log progress (info level) and show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    text = "the recipe's chain (teacher, student, distill, speedtest, report) as child runs of one run"
    p = sub.add_parser("main", help=text, description=text + "; finished steps are reused, unfinished ones continued")
    _common(p, "root of the steps' output directories")
    p.add_argument("--results-dir", default="", help="where speedtest and report write their tables "
                   "(default experiments/results)")
    p.add_argument("--speed-questions", type=int, default=1000, help="dev questions of the speed test")
    p.add_argument("--backends", default="", help=f"speed test backends, a subset of {' '.join(BACKENDS)}")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of the speed test")
    p.add_argument("--dev-json", default="", help="SQuAD JSON of the speed test's questions (default: official dev)")
    p.set_defaults(func=cmd_main)

    for role, text in (("teacher", "fine-tune the teacher on SQuAD"), ("student", "fine-tune the student alone")):
        p = sub.add_parser(role, help=text, description=text)
        _common(p)
        p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("distill", help="fine-tune the student with the teacher's soft targets")
    _common(p)
    _distill_args(p)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("search", help="Optuna study over temperature and alpha of the distill run")
    _common(p)
    _teacher_arg(p)
    p.add_argument("--study-name", default="", help="Optuna study name (default distill-<recipe>); reuse it to resume")
    p.add_argument("--storage", default="", help="Optuna RDB URL (default SQLite in the output dir); "
                   "postgresql://... lets several workers share one study")
    p.add_argument("--n-trials", type=int, default=None, help="trials this process runs")
    p.add_argument("--timeout", type=float, default=None, help="seconds after which no new trial starts")
    p.add_argument("--sampler-seed", type=int, default=0)
    p.add_argument("--temperature-range", type=float, nargs=2, default=(1.0, 10.0), metavar=("LOW", "HIGH"))
    p.add_argument("--alpha-range", type=float, nargs=2, default=(0.0, 1.0), metavar=("LOW", "HIGH"))
    p.add_argument("--search-lr", action="store_true", help="also search the learning rate (log scale)")
    p.add_argument("--lr-range", type=float, nargs=2, default=(1e-5, 3e-4), metavar=("LOW", "HIGH"))
    p.add_argument("--results-stem", default="", help="trials CSV and plots as <stem>.csv, <stem>-<plot>.png|html")
    p.add_argument("--no-register", action="store_true", help="do not register the best model")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("speedtest", help="CPU latency, throughput and EM/F1 per model and backend")
    p.add_argument("--recipe", default="cpu", help="time this recipe's registered teacher, student and distilled")
    p.add_argument("--model", action="append", default=[], metavar="NAME=SOURCE",
                   help="a model to time instead (local dir, hub name, MLflow URI); repeatable")
    p.add_argument("--paper-arch", action="store_true",
                   help="also time bert-base-uncased (teacher) and distilbert-base-uncased (student) "
                        "architectures with random weights")
    p.add_argument("--dev-json", default=str(DEFAULT_DEV_JSON), help="SQuAD JSON the questions come from")
    p.add_argument("--questions", type=int, default=1000, help="number of dev questions (seeded sample)")
    p.add_argument("--backends", default="", help=f"space-separated subset of {' '.join(BACKENDS)} (default all)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    p.add_argument("--batch-size", type=int, default=32, help="questions per call in the throughput pass")
    p.add_argument("--warmup", type=int, default=10, help="untimed questions first")
    p.add_argument("--no-hf-baseline", action="store_true", help="skip the HF question-answering pipeline row")
    p.add_argument("--output", default="", help="table path stem (default experiments/results/<run name>)")
    p.add_argument("--run-name", default="", help="MLflow run name and table name (default <recipe>-speed)")
    _experiment(p)
    p.set_defaults(func=cmd_speedtest)

    p = sub.add_parser("predict", help="answer one question")
    p.add_argument("--model", required=True, help=MODEL_SOURCES)
    p.add_argument("--question", required=True)
    p.add_argument("--context", required=True)
    p.add_argument("--backend", default="fp32", choices=BACKENDS)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="EM/F1 of a saved model on a SQuAD dev set")
    p.add_argument("--model", required=True, help=MODEL_SOURCES)
    p.add_argument("--data", default=str(DEFAULT_DEV_JSON.parent), help="hub name, directory or dev JSON")
    p.add_argument("--dev-questions", type=lambda v: _positive_int(v) if v else None, default=None,
                   help="seeded subset (default: all)")
    p.add_argument("--backend", default="fp32", choices=BACKENDS)
    p.add_argument("--predictions", default="", help="also write id -> answer JSON here")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="a recipe's teacher/student/distilled results table from MLflow")
    p.add_argument("--recipe", default="cpu")
    p.add_argument("--output", default="", help="table path stem (default experiments/results/<recipe>)")
    _experiment(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("score", help="official SQuAD v1.1 EM/F1 of a predictions file")
    p.add_argument("dataset", metavar="DATASET_JSON", help="SQuAD v1.1 JSON (e.g. dev-v1.1.json)")
    p.add_argument("predictions", metavar="PREDICTIONS_JSON", help="JSON object of question id -> answer text")
    p.set_defaults(func=cmd_score)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    func: Callable[[argparse.Namespace], Any] = args.func
    try:
        result = func(args)
    except BaseException as exc:  # noqa: B036 - every error a user can cause becomes one line
        return _report_error(args, exc)
    if result is not None:
        print(json.dumps(result, default=str))
    return 0


def _user_error(exc: BaseException) -> str | None:
    """The one line for an error the user can act on; None for a bug (which keeps its traceback)."""
    if isinstance(exc, QaDistillError | OSError):
        return str(exc)  # bad input; a read-only, full or missing path
    mlflow_errors = sys.modules.get("mlflow.exceptions")
    if mlflow_errors and isinstance(exc, mlflow_errors.MlflowException):
        return f"MLflow: {exc.message.splitlines()[0] if exc.message else exc}"
    return None


def _report_error(args: argparse.Namespace, exc: BaseException) -> int:
    """Print one line (last, after the traceback under -v) and return the exit code: 2 bad input,
    1 environment, 128 + N a signal."""
    if isinstance(exc, KeyboardInterrupt):
        exc = Interrupted(signal.SIGINT)
    if isinstance(exc, Interrupted):
        line = f"{exc}; rerun the same command to resume from the last checkpoint"
        code = 128 + exc.signum
    elif (message := _user_error(exc)) is not None:
        line = f"error: {message}"
        code = 2 if isinstance(exc, QaDistillError) else 1
    else:
        raise exc
    if args.verbose:
        import traceback

        traceback.print_exception(exc)
    print(f"qa-distill {args.command}: {line}", file=sys.stderr)
    return code

if __name__ == "__main__":
    sys.exit(main())
