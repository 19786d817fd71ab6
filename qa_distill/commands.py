"""One function per `qa-distill` subcommand: configuration from the parsed flags, one call, a result.

Each command validates its configuration before importing the training stack (seconds of imports),
so bad input fails at once.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from qa_distill.config import (
    DEFAULT_DEV_JSON,
    DataConfig,
    TrackingConfig,
    WorkflowConfig,
    registered_uri,
)
from qa_distill.errors import ConfigError
from qa_distill.recipes import load_config, load_speedtest, load_tracking, recipe_path
from qa_distill.validation import check_name


def overrides(args: argparse.Namespace) -> list[str]:
    """`--set` values, each of which may hold several space-separated SECTION.KEY=VALUE."""
    return [item for chunk in args.overrides for item in chunk.split()]


def explicit(args: argparse.Namespace) -> dict[str, Any]:
    """The flags that stand for a setting (`--alpha` -> `distillation.alpha`), as given."""
    return {key: value for key, value in vars(args).items() if "." in key}


def _config(args: argparse.Namespace, role: str):
    return load_config(args.recipe, role, overrides=overrides(args), explicit=explicit(args),
                       output_dir=args.output_dir)


def _connect_for(source: str) -> None:
    """A `runs:/` or `models:/` source is looked up in the configured tracking store."""
    from qa_distill.models import is_mlflow_uri
    from qa_distill.training import preflight

    if is_mlflow_uri(source):
        preflight.connect(TrackingConfig())


def finetune(args: argparse.Namespace) -> dict[str, Any]:
    config = _config(args, args.command)
    from qa_distill.training.runs import run_finetune

    return run_finetune(config)


def distill(args: argparse.Namespace) -> dict[str, Any]:
    config = _config(args, "distill")
    from qa_distill.training.runs import run_distill

    return run_distill(config)


def search(args: argparse.Namespace) -> dict[str, Any]:
    config = _config(args, "distill")
    if config.search.n_trials is None and config.search.timeout is None:
        raise ConfigError("give --n-trials or --timeout (or both): a study needs an end")
    from qa_distill.search.study import run_search

    return run_search(config)


def _recipe_models(recipe: str) -> list[str]:
    """A recipe's registered models, named as in its results tables."""
    from qa_distill.reporting.report import ROLE_NAMES

    return [f"{name}={registered_uri(recipe, role)}" for role, name in ROLE_NAMES.items()]


def speedtest(args: argparse.Namespace) -> list[dict[str, Any]]:
    from qa_distill.reporting.budgets import speed_stem
    from qa_distill.training import preflight

    config = load_speedtest(args.recipe, overrides=overrides(args), explicit=explicit(args))
    speed, tracking, recipe = config.speed, config.tracking, config.recipe
    speed.run_name = check_name(speed.run_name or f"{recipe}-speed", "--run-name")
    preflight.connect(tracking)
    from qa_distill.models import random_weight_model
    from qa_distill.speedtest.speed import run_speedtest

    with tempfile.TemporaryDirectory() as tmp:
        if speed.paper_arch:
            speed.models += [f"{role}={random_weight_model(arch, f'{tmp}/{arch}')}" for role, arch in
                             (("teacher", "bert-base-uncased"), ("student", "distilbert-base-uncased"))]
        speed.models = speed.models or _recipe_models(recipe)
        speed.output = str(speed_stem(recipe, speed))
        return run_speedtest(speed, tracking=tracking, recipe=recipe).to_dict("records")


def predict(args: argparse.Namespace) -> dict[str, str]:
    _connect_for(args.model)
    from qa_distill.inference.predictor import predict
    from qa_distill.tracking.runs import log_result

    result = {"answer": predict(args.model, question=args.question, context=args.context, backend=args.backend)}
    log_result("predict", {"model": args.model, "backend": args.backend, **result})
    return result


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    data = DataConfig(data=args.data or str(DEFAULT_DEV_JSON.parent), dev_questions=args.dev_questions)
    _connect_for(args.model)
    from qa_distill.inference.evaluate import evaluate_model
    from qa_distill.tracking.runs import log_result

    result = evaluate_model(args.model, data, backend=args.backend)
    predictions = result.pop("predictions")
    if args.predictions:
        Path(args.predictions).write_text(json.dumps(predictions))
    log_result("evaluate", {"model": args.model, "backend": args.backend, **result})
    return result


def report(args: argparse.Namespace) -> list[dict[str, Any]]:
    from qa_distill.training import preflight

    tracking = load_tracking(args.recipe, experiment=explicit(args).get("tracking.experiment"))
    preflight.connect(tracking)
    from qa_distill.reporting.report import run_report

    return run_report(recipe_path(args.recipe).stem, tracking, output=args.output or None).to_dict("records")


def score(args: argparse.Namespace) -> dict[str, Any]:
    from qa_distill.data.scoring import score_files
    from qa_distill.tracking.runs import log_result

    result = score_files(args.dataset, args.predictions)
    log_result("score", result)
    return result


def main(args: argparse.Namespace) -> dict[str, Any]:
    from qa_distill.workflow.steps import run_main

    settings = {key: value for key, value in vars(args).items() if key in WorkflowConfig.__dataclass_fields__}
    return run_main(WorkflowConfig(**{**settings, "overrides": " ".join(overrides(args))}))
