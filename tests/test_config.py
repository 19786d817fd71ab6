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
