"""Recipes plus command-line overrides become typed configuration, or a clear error."""

import pytest

from qa_distill.config import load_config
from qa_distill.errors import ConfigError


def test_overrides_take_each_field_type():
    # YAML reads "3e-4" (no dot) as a string: the field's type must still make it a float.
    config = load_config(
        "cpu", "teacher", ["training.learning_rate=3e-4", "training.epochs=2", "data.train_questions=500"]
    )
    assert config.training.learning_rate == 3e-4 and isinstance(config.training.learning_rate, float)
    assert config.training.epochs == 2.0 and isinstance(config.training.epochs, float)
    assert config.data.train_questions == 500


@pytest.mark.parametrize(
    "override, message",
    [("training.learning_rate=fast", "training.learning_rate"), ("training.batch_size=1.5x", "training.batch_size")],
)
def test_a_value_of_the_wrong_type_names_its_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("cpu", "teacher", [override])


def test_the_experiment_comes_from_the_recipe_then_the_command_line(tmp_path):
    from qa_distill.config import load_tracking

    recipe = tmp_path / "mine.yaml"
    recipe.write_text("tracking:\n  experiment: from-recipe\n")
    assert load_tracking("cpu").experiment == "qa-distill"
    assert load_tracking(str(recipe)).experiment == "from-recipe"
    assert load_tracking(str(recipe), "from-option").experiment == "from-option"
    assert load_config(str(recipe), "teacher", experiment="from-option").tracking.experiment == "from-option"
    assert load_config(str(recipe), "teacher").tracking.experiment == "from-recipe"


@pytest.mark.parametrize(
    "override, message",
    [("distillation.temperature=inf", "distillation.temperature must be a finite number"),
     ("distillation.temperature=nan", "distillation.temperature must be a finite number"),
     ("distillation.alpha=nan", r"distillation.alpha must be in \[0, 1\]"),
     ("training.batch_size=2.5", "training.batch_size: 2.5 is not a whole number"),
     ("data.train_questions=10.5", "data.train_questions: 10.5 is not a whole number"),
     ("training.save_minutes=0", "training.save_minutes must be positive"),
     ("training.learning_rate=.inf", "training.learning_rate must be a finite number")],
)
def test_values_that_would_train_wrong_are_refused_naming_their_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("cpu", "distill", [override])


def test_a_whole_float_is_a_whole_number():
    assert load_config("cpu", "teacher", ["training.batch_size=8.0"]).training.batch_size == 8


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "a\\b", ""])
def test_names_that_become_files_stay_in_their_folder(name):
    from qa_distill.config import check_name

    with pytest.raises(ConfigError, match="--run-name"):
        check_name(name, "--run-name")
    assert check_name("cpu-speed", "--run-name") == "cpu-speed"
