"""MLproject and the command line agree: every parameter reaches a flag the entry point accepts.

`mlflow run` fills each `{name}` of an entry point's command with the parameter's value, quoted;
a parameter the command forgets, or a flag the CLI lacks, would only fail when a user runs it.
"""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from qa_distill.cli import build_parser

SPEC = yaml.safe_load((Path(__file__).parent.parent / "MLproject").read_text())
ENTRY_POINTS = SPEC["entry_points"]
# values for parameters without a default, and numbers that must parse as their type
GIVEN = {"model": "models:/qa-distill-cpu-distill/1", "question": "Who?", "context": "Ann did.",
         "dataset": "dev.json", "predictions": "predictions.json"}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_every_parameter_is_in_the_command_and_the_command_parses(name):
    entry = ENTRY_POINTS[name]
    parameters = entry.get("parameters", {})
    assert set(re.findall(r"\{(\w+)\}", entry["command"])) == set(parameters)
    values = {key: str(GIVEN.get(key, spec.get("default", ""))) for key, spec in parameters.items()}
    for key, spec in parameters.items():
        if spec.get("type") == "float" and values[key]:
            float(values[key])  # a number's default is a number
    argv = shlex.split(entry["command"].format(**{k: shlex.quote(v) for k, v in values.items()}))
    assert argv[0] == "qa-distill"
    args = build_parser().parse_args(argv[1:])  # SystemExit (exit 2) on an unknown flag or a bad value
    assert args.command == name


def test_a_float_parameter_given_by_mlflow_as_text_is_typed_by_the_configuration():
    from qa_distill.commands import _config

    values = {"recipe": "cpu", "data": "", "output_dir": "", "teacher": "t", "temperature": "3", "alpha": "0.25",
              "overrides": "", "experiment": ""}
    argv = shlex.split(ENTRY_POINTS["distill"]["command"].format(**{k: shlex.quote(v) for k, v in values.items()}))
    config = _config(build_parser().parse_args(argv[1:]), "distill")
    assert (config.distillation.temperature, config.distillation.alpha) == (3.0, 0.25)


def test_a_whole_number_written_as_a_float_is_taken_and_a_fraction_refused(capsys):
    from qa_distill.commands import explicit, overrides
    from qa_distill.errors import ConfigError
    from qa_distill.recipes import load_speedtest

    args = build_parser().parse_args(["main", "--speed-questions", "500.0", "--threads", "1"])
    assert (args.speed_questions, args.threads) == (500, 1)
    args = build_parser().parse_args(["speedtest", "--questions", "200.0"])
    assert load_speedtest(args.recipe, overrides=overrides(args), explicit=explicit(args)).speed.questions == 200
    with pytest.raises(ConfigError, match="speed.questions: '2.5' is not a whole number"):
        load_speedtest("cpu", overrides=None, explicit={"speed.questions": "2.5"})
    with pytest.raises(ConfigError, match="speed.questions: 'inf' is not a valid int"):
        load_speedtest("cpu", overrides=None, explicit={"speed.questions": "inf"})
    with pytest.raises(SystemExit):
        build_parser().parse_args(["main", "--threads", "1.5"])
    assert "'1.5' is not a whole number" in capsys.readouterr().err


def test_mlflow_run_builds_a_virtualenv_with_the_cpu_torch_then_the_project():
    """`mlflow run .` without --env-manager takes MLproject's python_env (virtualenv), which installs
    what .ci/run does: torch 2.13.0, here from the CPU wheel index, then the project."""
    from mlflow.projects.backend.local import _env_type_to_env_manager
    from mlflow.projects.utils import load_project
    from mlflow.utils.environment import _PythonEnv

    root = Path(__file__).parent.parent
    project = load_project(str(root))
    assert _env_type_to_env_manager(project.env_type) == "virtualenv"
    env = _PythonEnv.from_yaml(project.env_config_path)
    assert env.dependencies == ["--extra-index-url https://download.pytorch.org/whl/cpu", "torch==2.13.0", "-e ."]
    assert "pip install -q torch==2.13.0\n" in (root / ".ci" / "run").read_text()
    assert not (root / "conda.yaml").exists()
