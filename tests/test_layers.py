"""The layer terms' plumbing on tiny models: the layer map, attention scores from hooked queries
and keys, refusals in one line, and the trainer's loss with and without the terms."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForQuestionAnswering, BertConfig, BertForQuestionAnswering

from qa_distill.config import DistillConfig
from qa_distill.errors import ConfigError
from qa_distill.models import load_qa_model
from qa_distill.recipes import load_config
from qa_distill.training.layers import AttentionTap, LayerTerms, default_layer_map, layer_map
from qa_distill.training.losses import distillation_loss, hidden_state_loss, total_loss
from qa_distill.training.runs import load_teacher, make_distill_trainer, prepare

RECIPE = str(Path(__file__).parent / "recipes" / "runs.yaml")


def _bert(layers: int, heads: int = 2, width: int = 32) -> BertForQuestionAnswering:
    torch.manual_seed(layers + heads)
    return BertForQuestionAnswering(BertConfig(vocab_size=60, hidden_size=width, num_hidden_layers=layers,
                                               num_attention_heads=heads, intermediate_size=64))


@pytest.mark.parametrize(("student", "teacher", "expected"), [
    (6, 6, [0, 1, 2, 3, 4, 5, 6]), (3, 6, [0, 2, 4, 6]), (2, 6, [0, 3, 6]), (4, 6, [0, 1, 3, 4, 6]),
])
def test_the_default_map_spreads_the_students_outputs_over_the_teachers_last_on_last(student, teacher, expected):
    assert default_layer_map(student, teacher) == expected


def test_a_student_of_chosen_layers_maps_by_depth_not_by_origin(tiny_bert):
    student = load_qa_model(tiny_bert, layers=[0, 1])  # the bottom two of four: still last on last
    assert student.kept_layers == [0, 1]
    assert layer_map(None, student.model, load_qa_model(tiny_bert).model, attention=True) == [0, 2, 4]


def test_a_student_cut_with_stride_2_maps_onto_its_teacher(tiny_bert):
    student = load_qa_model(tiny_bert, layer_stride=2)
    teacher = load_qa_model(tiny_bert)
    assert student.kept_layers == [0, 2]
    assert layer_map(None, student.model, teacher.model, attention=True) == [0, 2, 4]
    assert layer_map([0, 1, 3], student.model, teacher.model, attention=True) == [0, 1, 3]


@pytest.mark.parametrize(("given", "student", "teacher", "attention", "message"), [
    ([0, 2], _bert(2), _bert(4), False, r"the student has 3 outputs .* the teacher 5"),
    ([0, 2, 6], _bert(2), _bert(4), False, r"one teacher output in 0..4"),
    (None, _bert(2, heads=4), _bert(4), True, "the student has 4 attention heads, the teacher 2"),
    (None, _bert(2, width=16, heads=2), _bert(4), False, "the student's hidden size is 16, the teacher's 32"),
])
def test_maps_and_models_that_cannot_pair_are_refused_in_one_line(given, student, teacher, attention, message):
    with pytest.raises(ConfigError, match=message) as caught:
        layer_map(given, student, teacher, attention=attention)
    assert "\n" not in str(caught.value)


def test_other_head_counts_pass_without_the_attention_term():
    assert layer_map(None, _bert(2, heads=4), _bert(4), attention=False) == [0, 2, 4]


def test_tapped_scores_give_the_eager_kernels_attention_probabilities():
    model = _bert(3).eval()
    ids = torch.randint(0, 60, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    tap = AttentionTap(model, [0, 2])
    with tap.hooked():
        model(input_ids=ids, attention_mask=mask)  # the default kernel (SDPA)
        scores = tap.scores()
    eager = AutoModelForQuestionAnswering.from_config(model.config, attn_implementation="eager")
    eager.load_state_dict(model.state_dict())
    probabilities = eager.eval()(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    for got, layer in zip(scores, (0, 2), strict=True):
        got = got.masked_fill(~mask.bool()[:, None, None, :], float("-inf")).softmax(-1)
        assert torch.allclose(got, probabilities[layer], atol=1e-6)


def _trainer(tmp_path, dev_sample, tiny_bert, *extra):
    config = load_config(RECIPE, "distill", output_dir=str(tmp_path / "distill"),
                         overrides=[f"model.name={tiny_bert}", f"data.cache_dir={tmp_path / 'cache'}",
                                    "data.train_questions=8", *extra],
                         explicit={"data.data": str(dev_sample), "distillation.teacher": tiny_bert})
    p = prepare(config)
    teacher = load_teacher(config, p.student)
    trainer, info = make_distill_trainer(p, teacher)
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer, info, {k: v.to(trainer.args.device) for k, v in batch.items()}


def test_zero_weights_keep_the_cache_and_todays_loss(tmp_path, dev_sample, tiny_bert):
    trainer, info, batch = _trainer(tmp_path, dev_sample, tiny_bert)
    assert trainer.layers is None and info["teacher_cache_key"]
    model = trainer.model.train()
    torch.manual_seed(0)
    loss = trainer.compute_loss(model, batch)
    torch.manual_seed(0)
    out = model(**trainer._student_inputs(model, batch))
    t_start, t_end = trainer.teacher_logits.batch(batch["feature_index"], out.start_logits.shape[1])
    today = distillation_loss(out.start_logits, out.end_logits, t_start, t_end, batch["start_positions"],
                              batch["end_positions"], 2.0, 0.5, mask=batch["attention_mask"])
    assert torch.equal(loss, today)


def test_a_hidden_weight_runs_the_teacher_on_the_fly_and_adds_the_mapped_mse(tmp_path, dev_sample, tiny_bert):
    trainer, info, batch = _trainer(tmp_path, dev_sample, tiny_bert, "distillation.hidden_weight=0.5")
    assert trainer.layers.layer_map == [0, 2, 4] and trainer.teacher is not None and info == {}
    model = trainer.model.train()
    torch.manual_seed(0)  # the same dropout in both forwards
    loss = trainer.compute_loss(model, batch)
    inputs = trainer._student_inputs(model, batch)
    torch.manual_seed(0)
    s = model(**inputs, output_hidden_states=True)
    with torch.no_grad():
        t = trainer.teacher(**inputs, output_hidden_states=True)
    logit = distillation_loss(s.start_logits, s.end_logits, t.start_logits, t.end_logits, batch["start_positions"],
                              batch["end_positions"], 2.0, 0.5, mask=batch["attention_mask"])
    hidden = hidden_state_loss(s.hidden_states, [t.hidden_states[i] for i in (0, 2, 4)], batch["attention_mask"])
    assert loss.item() == pytest.approx(total_loss(logit, hidden=hidden, hidden_weight=0.5).item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in trainer.teacher.parameters())


def test_the_attention_term_taps_every_student_layer_and_the_mapped_teacher_layers(tiny_bert):
    student, teacher = load_qa_model(tiny_bert, layer_stride=2).model, load_qa_model(tiny_bert).model
    terms = LayerTerms.of(DistillConfig(attention_weight=1.0), student, teacher)
    assert (terms.student_tap.layers, terms.teacher_tap.layers, terms.outputs("student")) == ([0, 1], [1, 3], None)
    assert LayerTerms.of(DistillConfig(), student, teacher) is None


@pytest.mark.parametrize(("given", "cut_from", "tapped"), [
    (None, [0, 2], [0, 2]),  # no map: the layers the student was copied from
    ([0, 2, 4], [0, 2], [1, 3]),  # a map given wins
    (None, None, [1, 3]),  # a student not cut: by the map
    (None, [0, 7], [1, 3]),  # cut from layers this teacher lacks: by the map
])
def test_attention_taps_the_layers_the_student_was_cut_from_unless_a_map_is_given(tiny_bert, given, cut_from,
                                                                                   tapped):
    student, teacher = load_qa_model(tiny_bert, layer_stride=2).model, load_qa_model(tiny_bert).model
    terms = LayerTerms.of(DistillConfig(attention_weight=1.0, layer_map=given), student, teacher, cut_from=cut_from)
    assert (terms.student_tap.layers, terms.teacher_tap.layers, terms.layer_map) == ([0, 1], tapped, [0, 2, 4])


def test_a_distillation_trainer_taps_the_teacher_layers_its_student_was_cut_from(tmp_path, dev_sample, tiny_bert):
    trainer, _, _ = _trainer(tmp_path, dev_sample, tiny_bert, "distillation.attention_weight=1.0")
    assert trainer.layers.teacher_tap.layers == [0, 2]  # the recipe cuts layers 0 and 2 of the tiny teacher
