"""`qa-distill`: one subcommand per entry point. Parse, call one function of `commands.py`, print JSON.

A flag that stands for a setting takes its help text and default from the setting's field in
`config.py`, so the two cannot drift apart; its value reaches the configuration as an explicit
`section.key` (the last layer, `recipes.py`), typed and checked there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, get_type_hints

from qa_distill import commands
from qa_distill.config import (
    BACKENDS,
    DEFAULT_DEV_JSON,
    DataConfig,
    DistillConfig,
    SearchConfig,
    SpeedConfig,
    TrackingConfig,
    WorkflowConfig,
    help_of,
    launched_run_id,
    type_name,
)
from qa_distill.errors import Interrupted, QaDistillError

RECIPE_HELP = "recipe name from experiments/ (cpu, paper) or a YAML file"


def add_settings(parser: argparse.ArgumentParser, cls: type, section: str | None,
                 *, names: Sequence[str] | None = None) -> None:
    """A flag per setting of `cls` (or of `names` only), help and default from its field.

    With a `section`, a flag's value is an explicit `section.key` (None: not given, the recipe's
    value stays); without, it is the value of the field itself (for `WorkflowConfig`).
    """
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if names is not None and f.name not in names:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = " ".join(map(str, default)) if isinstance(default, tuple | list) else default
        text = f.metadata.get("help", "") + (f" (default: {shown})" if shown not in ("", None, []) else "")
        kwargs: dict[str, Any] = {"dest": f"{section}.{f.name}" if section else f.name, "help": text,
                                  "default": None if section else default, "metavar": f.name.upper()}
        hint = type_name(hints[f.name])
        if "bool" in hint:
            kwargs |= {"action": argparse.BooleanOptionalAction, "metavar": None}
        elif hint == "tuple[float, float]":
            kwargs |= {"nargs": 2, "metavar": ("LOW", "HIGH")}
        elif hint.startswith("list["):
            kwargs |= {"action": "append", "metavar": "NAME=SOURCE"}
        elif not section and hint in ("int", "float", "float | None"):
            kwargs["type"] = {"int": _whole_number, "float": float, "float | None": _optional_float}[hint]
        parser.add_argument(f.metadata.get("flag") or "--" + f.name.replace("_", "-"), **kwargs)


def _recipe(parser: argparse.ArgumentParser, text: str = RECIPE_HELP) -> None:
    parser.add_argument("--recipe", default="cpu", help=text)


def _overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override any recipe value, e.g. --set training.epochs=1 (repeatable; several may be "
             "given in one space-separated string)",
    )


def _experiment(parser: argparse.ArgumentParser) -> None:
    add_settings(parser, TrackingConfig, "tracking", names=["experiment"])


def _training(parser: argparse.ArgumentParser) -> None:
    """What every training command takes: recipe, data, output directory, overrides, experiment."""
    _recipe(parser)
    add_settings(parser, DataConfig, "data", names=["data"])
    parser.add_argument("--output-dir", default=None, help="where the model is saved (default outputs/<recipe>/<role>)")
    _overrides(parser)
    _experiment(parser)


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help=help_of(DistillConfig, "teacher"))
    parser.add_argument("--backend", default="fp32", choices=BACKENDS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qa-distill", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log progress (info level) and show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    text = "the recipe's chain (teacher, student, distill, speedtest, report) as child runs of one run"
    p = sub.add_parser("main", help=text, description=text + "; finished steps are reused, unfinished ones continued")
    add_settings(p, WorkflowConfig, None,
                 names=[f.name for f in dataclasses.fields(WorkflowConfig) if f.name != "overrides"])
    _overrides(p)
    p.set_defaults(func=commands.main)

    for role, text in (("teacher", "fine-tune the teacher on SQuAD"), ("student", "fine-tune the student alone")):
        p = sub.add_parser(role, help=text, description=text)
        _training(p)
        p.set_defaults(func=commands.finetune)

    p = sub.add_parser("distill", help="fine-tune the student with the teacher's soft targets")
    _training(p)
    add_settings(p, DistillConfig, "distillation", names=["teacher", "temperature", "alpha"])
    p.set_defaults(func=commands.distill)

    p = sub.add_parser("search", help="Optuna study over temperature and alpha of the distill run")
    _training(p)
    add_settings(p, DistillConfig, "distillation", names=["teacher"])
    add_settings(p, SearchConfig, "search")
    p.set_defaults(func=commands.search)

    p = sub.add_parser("speedtest", help="CPU latency, throughput and EM/F1 per model and backend")
    _recipe(p, "time this recipe's registered teacher, student and distilled; its speed section applies")
    add_settings(p, SpeedConfig, "speed")
    _overrides(p)
    _experiment(p)
    p.set_defaults(func=commands.speedtest)

    p = sub.add_parser("predict", help="answer one question")
    _model_arguments(p)
    p.add_argument("--question", required=True)
    p.add_argument("--context", required=True)
    p.set_defaults(func=commands.predict)

    p = sub.add_parser("evaluate", help="EM/F1 of a saved model on a SQuAD dev set")
    _model_arguments(p)
    p.add_argument("--data", default=str(DEFAULT_DEV_JSON.parent), help=help_of(DataConfig, "data"))
    p.add_argument("--dev-questions", type=lambda v: _positive_int(v) if v else None, default=None,
                   help="seeded subset (default: all)")
    p.add_argument("--predictions", default="", help="also write id -> answer JSON here")
    p.set_defaults(func=commands.evaluate)

    p = sub.add_parser("report", help="a recipe's teacher/student/distilled results table from MLflow")
    _recipe(p)
    p.add_argument("--output", default="", help="table path stem (default experiments/results/<recipe>)")
    _experiment(p)
    p.set_defaults(func=commands.report)

    p = sub.add_parser("score", help="official SQuAD v1.1 EM/F1 of a predictions file")
    p.add_argument("dataset", metavar="DATASET_JSON", help="SQuAD v1.1 JSON (e.g. dev-v1.1.json)")
    p.add_argument("predictions", metavar="PREDICTIONS_JSON", help="JSON object of question id -> answer text")
    p.set_defaults(func=commands.score)
    return parser


def _whole_number(text: str) -> int:
    """An argparse type: a whole number, also written as MLflow writes a float parameter ("8.0")."""
    try:
        number = float(text)
        if number == int(number):
            return int(number)
    except (ValueError, OverflowError):
        pass
    raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")


def _optional_float(text: str) -> float | None:
    """An argparse type: a number, or "" (MLproject's empty default) for None."""
    if not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _positive_int(text: str) -> int:
    """An argparse type: a whole number > 0 (argparse prints the one-line error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def main(*, argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    func: Callable[[argparse.Namespace], Any] = args.func
    launched = launched_run_id()  # before a move to another experiment hands over another
    try:
        result = func(args)
    except BaseException as exc:  # noqa: B036 - every error a user can cause becomes one line
        code = _report_error(args, exc)
        if launched and "mlflow" in sys.modules:  # else this process never touched the run
            from qa_distill.tracking.launched_run import keep_status

            keep_status(launched)
        return code
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
