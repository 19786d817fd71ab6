"""Every recipe loads for every role, and names its models after itself.

A recipe's registered models are `qa-distill-<recipe>-<role>`; `distill` reads the recipe's own
teacher unless the recipe or the command names another, so a recipe copied under a new name
never trains on the teacher of the recipe it was copied from.
"""

import shutil
from pathlib import Path

import pytest

from qa_distill.commands import _recipe_models
from qa_distill.config import EXPERIMENTS_DIR, ROLES, registered_name
from qa_distill.errors import ConfigError
from qa_distill.recipes import load_config

RECIPES = sorted([*EXPERIMENTS_DIR.glob("*.yaml"), *(Path(__file__).parent / "recipes").glob("*.yaml")])
NAMES_A_TEACHER = {"layers"}  # tests/recipes/layers.yaml sets one, to test the layers


def test_the_recipes_are_found():
    assert {"cpu", "gpu", "paper", "tiny", "runs", "layers"} <= {path.stem for path in RECIPES}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
@pytest.mark.parametrize("role", ROLES)
def test_every_recipe_loads_for_every_role_and_names_its_model_after_itself(recipe, role):
    config = load_config(str(recipe), role, output_dir="/tmp/unused")
    assert (config.recipe, config.role) == (recipe.stem, role)
    assert config.registered_name == f"qa-distill-{recipe.stem}-{role}"
    if role == "distill" and recipe.stem not in NAMES_A_TEACHER:
        assert config.distillation.teacher == f"models:/qa-distill-{recipe.stem}-teacher/latest"


def test_the_names_users_know_stay_as_they_are():
    assert registered_name("cpu", "teacher") == "qa-distill-cpu-teacher"
    assert registered_name("tiny", "distill") == "qa-distill-tiny-distill"
    assert registered_name("cpu", "search-best") == "qa-distill-cpu-search-best"
    assert load_config("cpu", "distill").distillation.teacher == "models:/qa-distill-cpu-teacher/latest"
    assert _recipe_models("gpu") == ["teacher=models:/qa-distill-gpu-teacher/latest",
                                     "student=models:/qa-distill-gpu-student/latest",
                                     "distilled=models:/qa-distill-gpu-distill/latest"]


def test_a_copied_recipe_distils_from_its_own_teacher(tmp_path):
    copy = tmp_path / "mine.yaml"
    shutil.copy(EXPERIMENTS_DIR / "cpu.yaml", copy)
    config = load_config(str(copy), "distill")
    assert config.distillation.teacher == "models:/qa-distill-mine-teacher/latest"
    assert config.registered_name == "qa-distill-mine-distill"


def test_a_teacher_the_recipe_or_the_command_names_wins(tmp_path):
    recipe = tmp_path / "named.yaml"
    recipe.write_text("distill:\n  distillation:\n    teacher: runs:/abc/model\n")
    assert load_config(str(recipe), "distill").distillation.teacher == "runs:/abc/model"
    given = load_config(str(recipe), "distill", explicit={"distillation.teacher": "models:/other/2"})
    assert given.distillation.teacher == "models:/other/2"
    empty = load_config("cpu", "distill", explicit={"distillation.teacher": ""})  # an empty flag: the default
    assert empty.distillation.teacher == "models:/qa-distill-cpu-teacher/latest"
    assert load_config("cpu", "teacher").distillation.teacher == ""  # only distill reads a teacher


@pytest.mark.parametrize("old, new", [("n_best", "answers.n_best"),
                                      ("max_answer_length", "answers.max_answer_length")])
def test_an_answer_setting_under_its_old_key_names_the_new_one(tmp_path, old, new):
    with pytest.raises(ConfigError, match=rf"^override: training.{old} is now {new}$"):
        load_config("cpu", "teacher", overrides=[f"training.{old}=5"])
    recipe = tmp_path / "old.yaml"
    recipe.write_text(f"teacher:\n  training:\n    {old}: 5\n")
    with pytest.raises(ConfigError, match=rf"old.yaml \[teacher\]: training.{old} is now {new}$"):
        load_config(str(recipe), "teacher")
    assert getattr(load_config("cpu", "teacher", overrides=[f"{new}=5"]).answers, old) == 5


@pytest.mark.parametrize(("override", "message"), [
    ("distillation.hidden_weight=-0.5", r"distillation\.hidden_weight must be a finite number >= 0, got -0\.5"),
    ("distillation.attention_weight=.nan", r"distillation\.attention_weight must be a finite number >= 0"),
    ("distillation.layer_map=[0,4,2,6]", r"distillation\.layer_map must start at 0 \(embeddings\) and increase"),
    ("distillation.layer_map=[1,2,4,6]", r"distillation\.layer_map must start at 0"),
    ("distillation.layer_map=[0,x]", r"distillation\.layer_map: 'x' is not a valid int"),
    ("search.attention_weight_range=[2,1]", r"search ranges need low <= high"),
])
def test_bad_layer_term_settings_are_refused_in_one_line(override, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_config("cpu", "distill", overrides=[override])
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.layers=[1,3,5]"], r"model.layers \[1, 3, 5\] and model.layer_stride 2: give one of the two"),
    (["model.layer_stride=1", "model.layers=[3,1]"], r"model.layers must list layers >= 0 in increasing order"),
    (["model.layer_stride=1", "model.layers=[]"], r"model.layers must list layers >= 0 in increasing order"),
])
def test_a_student_is_cut_by_a_stride_or_a_list_of_layers_not_both(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("cpu", "distill", overrides=overrides)
    assert load_config("cpu", "distill", overrides=["model.layer_stride=1", "model.layers=[1,3,5]"]).model.layers == [
        1, 3, 5]


def test_layer_term_settings_default_to_todays_loss_and_take_a_list():
    k = load_config(str(Path(__file__).parent / "recipes" / "tiny.yaml"), "distill").distillation  # sets none
    assert (k.hidden_weight, k.attention_weight, k.layer_map) == (0.0, 0.0, None)
    assert load_config("cpu", "distill", overrides=["distillation.layer_map=[0,1,2,3]"]).distillation.layer_map == [
        0, 1, 2, 3]
    assert load_config("cpu", "distill", explicit={"distillation.layer_map": "0 2 4 6"}).distillation.layer_map == [
        0, 2, 4, 6]
