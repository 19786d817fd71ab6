"""`qa-distill`: one subcommand per entry point. Parse, validate, call one function, print JSON."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from qa_distill.errors import QaDistillError


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", default="cpu", help="recipe name from experiments/ (cpu, paper) or a YAML file")
    parser.add_argument("--data", default=None, help="hub dataset name, or a local directory / SQuAD JSON file")
    parser.add_argument("--output-dir", default=None, help="where the model is saved (default outputs/<recipe>/<role>)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override any recipe value, e.g. --set training.epochs=1 (repeatable; several may be "
             "given in one space-separated string)",
    )


def _distill_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", default=None, help="local dir, hub name, runs:/<id>/model or models:/<name>/<version>")
    parser.add_argument("--temperature", default=None, help="softmax temperature T (> 0)")
    parser.add_argument("--alpha", default=None, help="weight of the soft loss, in [0, 1]")


def _overrides(args: argparse.Namespace) -> list[str]:
    return [item for chunk in args.overrides for item in chunk.split()]


def _config(args: argparse.Namespace, role: str):
    from qa_distill.config import load_config

    return load_config(
        args.recipe, role, _overrides(args), data=args.data, output_dir=args.output_dir,
        teacher=getattr(args, "teacher", None), temperature=getattr(args, "temperature", None),
        alpha=getattr(args, "alpha", None),
    )


def cmd_finetune(args: argparse.Namespace) -> dict[str, Any]:
    from qa_distill.runs import run_finetune

    return run_finetune(_config(args, args.command))


def cmd_distill(args: argparse.Namespace) -> dict[str, Any]:
    from qa_distill.runs import run_distill

    return run_distill(_config(args, "distill"))


def cmd_score(args: argparse.Namespace) -> dict[str, Any]:
    from qa_distill.scoring import score_files

    return score_files(args.dataset, args.predictions)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qa-distill", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (info level)")
    sub = parser.add_subparsers(dest="command", required=True)

    for role, text in (("teacher", "fine-tune the teacher on SQuAD"), ("student", "fine-tune the student alone")):
        p = sub.add_parser(role, help=text, description=text)
        _common(p)
        p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("distill", help="fine-tune the student with the teacher's soft targets")
    _common(p)
    _distill_args(p)
    p.set_defaults(func=cmd_distill)

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
    except QaDistillError as exc:
        print(f"qa-distill {args.command}: error: {exc}", file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
