"""Recipes plus command-line overrides become typed configuration, or a clear error.

The layers, each winning over the one before: dataclass defaults, the recipe's shared sections,
the recipe's section for the role, `section.key=value` overrides, explicit arguments.
"""

import re
from pathlib import Path

import pytest

from qa_distill.config import PROJECT_ROOT
from qa_distill.errors import ConfigError
from qa_distill.recipes import load_config, parse_overrides

RECIPE = str(Path(__file__).parent / "recipes" / "layers.yaml")


def test_the_recipe_wins_over_the_defaults_and_the_role_section_over_the_recipe():
    teacher = load_config(RECIPE, "teacher")
    assert (teacher.recipe, teacher.role) == ("layers", "teacher")
    assert (teacher.data.max_length, teacher.data.doc_stride) == (256, 128)  # recipe; default
    assert teacher.training.epochs == 3.0  # recipe over the default 2.0
    assert teacher.training.learning_rate == 5e-5  # the teacher section over the recipe's 1e-4
    assert (teacher.distillation.temperature, teacher.distillation.alpha) == (2.0, 0.2)
    distill = load_config(RECIPE, "distill")
    assert (distill.training.epochs, distill.training.learning_rate) == (4.0, 1e-4)
    assert (distill.distillation.temperature, distill.distillation.alpha) == (3.0, 0.3)


def test_an_override_wins_over_the_role_section():
    config = load_config(RECIPE, "distill", overrides=["distillation.temperature=4", "training.epochs=5"])
    assert (config.distillation.temperature, config.training.epochs) == (4.0, 5.0)
    assert config.distillation.alpha == 0.3  # not overridden: the role section's


def test_an_explicit_argument_wins_over_an_override():
    overrides = ["distillation.temperature=4", "distillation.alpha=0.4", "distillation.teacher=override-teacher",
                 "data.data=override-data"]
    explicit = {"distillation.temperature": 5, "distillation.alpha": "0.6", "distillation.teacher": "argument-teacher",
                "data.data": "argument-data"}
    config = load_config(RECIPE, "distill", overrides=overrides, explicit=explicit, output_dir="/elsewhere/distill")
    k = config.distillation
    assert (k.temperature, k.alpha, k.teacher) == (5.0, 0.6, "argument-teacher")
    assert (config.data.data, config.output_dir) == ("argument-data", "/elsewhere/distill")


def test_an_empty_explicit_argument_leaves_the_layers_below():
    explicit = {"distillation.temperature": None, "distillation.alpha": "", "distillation.teacher": "",
                "data.data": None}
    config = load_config(RECIPE, "distill", overrides=["distillation.alpha=0.4"], explicit=explicit, output_dir=None)
    k = config.distillation
    assert (k.temperature, k.alpha, k.teacher) == (3.0, 0.4, "recipe-teacher")
    assert config.data.data == str(PROJECT_ROOT / "tests" / "squad-sample")  # the recipe's, made absolute
    assert config.output_dir == str(PROJECT_ROOT / "outputs" / "layers" / "distill")


def test_overrides_take_each_field_type():
    # YAML reads "3e-4" (no dot) as a string: the field's type must still make it a float.
    config = load_config(
        RECIPE, "teacher", overrides=["training.learning_rate=3e-4", "training.epochs=2", "data.train_questions=500"]
    )
    assert config.training.learning_rate == 3e-4 and isinstance(config.training.learning_rate, float)
    assert config.training.epochs == 2.0 and isinstance(config.training.epochs, float)
    assert config.data.train_questions == 500


def test_override_strings_split_on_whitespace_and_values_parse_as_yaml():
    assert parse_overrides("training.epochs=1 data.cache_dir= model.name=a=b") == {
        "training": {"epochs": 1}, "data": {"cache_dir": None}, "model": {"name": "a=b"}
    }
    assert parse_overrides(["training.eval_each_epoch=false"]) == {"training": {"eval_each_epoch": False}}


@pytest.mark.parametrize("override", ["training.epochs", "epochs=1"])
def test_an_override_without_section_key_and_value_says_the_form(override):
    with pytest.raises(ConfigError, match=rf"override '{override}': expected section.key=value"):
        parse_overrides([override])


@pytest.mark.parametrize(
    "override, message",
    [("training.learning_rate=fast", "training.learning_rate"), ("training.batch_size=1.5x", "training.batch_size"),
     ("training.epoch=1", r"override: unknown setting training.epoch"),
     ("train.epochs=1", r"override: unknown section 'train'")],
)
def test_a_bad_override_names_its_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RECIPE, "teacher", overrides=[override])


def test_the_experiment_comes_from_the_recipe_then_the_command_line(tmp_path):
    from qa_distill.recipes import load_tracking

    recipe = tmp_path / "mine.yaml"
    recipe.write_text("tracking:\n  experiment: from-recipe\n")
    assert load_tracking("cpu").experiment == "qa-distill"
    assert load_tracking(str(recipe)).experiment == "from-recipe"
    assert load_tracking(str(recipe), experiment="from-option").experiment == "from-option"
    given = load_config(str(recipe), "teacher", explicit={"tracking.experiment": "from-option"})
    assert given.tracking.experiment == "from-option"
    assert load_config(str(recipe), "teacher").tracking.experiment == "from-recipe"


@pytest.mark.parametrize(
    "override, message",
    [("distillation.temperature=inf", "distillation.temperature must be a finite number"),
     ("distillation.temperature=nan", "distillation.temperature must be a finite number"),
     ("distillation.alpha=nan", r"distillation.alpha must be in \[0, 1\]"),
     ("training.batch_size=2.5", "training.batch_size: 2.5 is not a whole number"),
     ("data.train_questions=10.5", "data.train_questions: 10.5 is not a whole number"),
     ("training.save_minutes=0", "training.save_minutes must be positive"),
     ("training.learning_rate=.inf", "training.learning_rate must be a finite number"),
     ("answers.n_best=0", "answers.n_best must be >= 1"),
     ("answers.max_answer_length=0", "answers.max_answer_length must be >= 1")],
)
def test_values_that_would_train_wrong_are_refused_naming_their_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RECIPE, "distill", overrides=[override])


def test_a_whole_float_is_a_whole_number():
    assert load_config(RECIPE, "teacher", overrides=["training.batch_size=8.0"]).training.batch_size == 8


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "a\\b", ""])
def test_names_that_become_files_stay_in_their_folder(name):
    from qa_distill.validation import check_name

    with pytest.raises(ConfigError, match="--run-name"):
        check_name(name, "--run-name")
    assert check_name("cpu-speed", "--run-name") == "cpu-speed"


def test_a_bad_key_in_a_role_section_names_the_file_and_the_role(tmp_path):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("distill:\n  training:\n    epoch: 1\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml \[distill\]: unknown setting training\.epoch"):
        load_config(str(recipe), "distill", explicit={"distillation.teacher": "t"})
    load_config(str(recipe), "teacher")  # another role never reads that section


def test_unknown_recipe_and_role_are_clear_errors():
    with pytest.raises(ConfigError, match=r"unknown recipe 'no-such-recipe': expected one of \[.*'cpu'"):
        load_config("no-such-recipe", "teacher")
    with pytest.raises(ConfigError, match="unknown role 'tutor'"):
        load_config(RECIPE, "tutor")


def test_search_and_speed_sections_layer_like_the_rest(tmp_path):
    from qa_distill.cli import build_parser
    from qa_distill.commands import _config, explicit, overrides
    from qa_distill.recipes import load_speedtest

    recipe = tmp_path / "study.yaml"
    recipe.write_text("search:\n  n_trials: 4\n  temperature_range: [1, 4]\n  storage: sqlite:///x.db\n"
                      "speed:\n  questions: 50\n  backends: [fp32, int8]\n")
    args = build_parser().parse_args(["search", "--recipe", str(recipe), "--teacher", "t", "--set",
                                      "search.n_trials=6 search.alpha_range=[0.2,0.8]", "--n-trials", "7",
                                      "--no-register"])
    search = _config(args, "distill").search
    assert (search.n_trials, search.temperature_range, search.alpha_range) == (7, (1.0, 4.0), (0.2, 0.8))
    assert (search.storage, search.register, search.search_lr) == ("sqlite:///x.db", False, False)
    args = build_parser().parse_args(["speedtest", "--recipe", str(recipe), "--model", "a=/m/a",
                                      "--model", "b=/m/b c=/m/c", "--threads", "1", "--no-hf-baseline",
                                      "--set", "tracking.experiment=timed"])
    config = load_speedtest(args.recipe, overrides=overrides(args), explicit=explicit(args))
    speed = config.speed
    assert config.tracking.experiment == "timed"  # the speed test's runs go where the layers say
    assert speed.models == ["a=/m/a", "b=/m/b", "c=/m/c"] and speed.backends == ("fp32", "int8")
    assert (speed.questions, speed.threads, speed.hf_baseline) == (50, 1, False)


@pytest.mark.parametrize(
    "override, message",
    [("search.temperature_range=[0,5]", "distillation.temperature must be a finite number > 0"),
     ("search.alpha_range=[0.5,0.2]", "search ranges need low <= high"),
     ("search.lr_range=[0,1e-4]", "search.lr_range needs 0 < low <= high"),
     ("search.temperature_range=[1]", "search.temperature_range: [1] is not a valid tuple"),
     ("search.n_trials=0", "search.n_trials must be positive"),
     ("search.study_name=it's", "must not contain a quote")],
)
def test_a_bad_search_setting_is_refused_before_any_data(override, message):
    with pytest.raises(ConfigError, match=re.escape(message) if "[" in message else message):
        load_config(RECIPE, "distill", overrides=[override])


@pytest.mark.parametrize(
    "override, message",
    [("speed.backends=fp64", "unknown backend(s) ['fp64']"), ("speed.questions=0", "speed.questions must be >= 1"),
     ("speed.backends=[]", "no backend to time")],
)
def test_a_bad_speed_setting_is_refused_before_any_model(override, message):
    from qa_distill.recipes import load_speedtest

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_speedtest(RECIPE, overrides=[override])
