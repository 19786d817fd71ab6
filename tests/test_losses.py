"""distillation_loss against values worked by hand."""

import math

import pytest
import torch

from qa_distill.errors import ConfigError
from qa_distill.training.losses import attention_loss, distillation_loss, hidden_state_loss, total_loss


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def _softmax(xs: list[float]) -> list[float]:
    z = sum(math.exp(x) for x in xs)
    return [math.exp(x) / z for x in xs]


def _loss(student, teacher, gold, temperature, alpha, mask=None):
    s, t = torch.tensor([student]), torch.tensor([teacher])
    g = torch.tensor([gold])
    return distillation_loss(s, s, t, t, g, g, temperature, alpha, mask=mask).item()


# student logits [0, 0] (uniform), teacher logits [ln 3, 0] -> teacher probs [3/4, 1/4] at T = 1
STUDENT, TEACHER = [0.0, 0.0], [math.log(3.0), 0.0]


def test_t1_half_and_half():
    ce = math.log(2)  # -log(1/2) for the gold position 0
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert _loss(STUDENT, TEACHER, 0, 1.0, 0.5) == pytest.approx(0.5 * ce + 0.5 * kl, rel=1e-6)


def test_t4_scales_the_soft_term_by_t_squared():
    p = _softmax([math.log(3.0) / 4, 0.0])  # the teacher softened: [0.568, 0.432]
    kl = _kl(p, [0.5, 0.5])
    expected = 0.25 * math.log(2) + 0.75 * 16 * kl
    assert _loss(STUDENT, TEACHER, 0, 4.0, 0.75) == pytest.approx(expected, rel=1e-5)


def test_alpha_zero_is_the_models_own_qa_loss():
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(0)
    model = BertForQuestionAnswering(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=32))
    ids = torch.randint(0, 50, (3, 7))
    starts, ends = torch.tensor([1, 6, 9]), torch.tensor([2, 6, 12])  # 9 and 12: past the window
    out = model(input_ids=ids, start_positions=starts, end_positions=ends)
    teacher = torch.randn(3, 7)
    mine = distillation_loss(out.start_logits, out.end_logits, teacher, teacher, starts, ends, 3.0, 0.0)
    assert mine.item() == pytest.approx(out.loss.item(), rel=1e-6)


def test_alpha_one_ignores_gold_labels():
    kl = _kl([0.75, 0.25], [0.5, 0.5])
    assert _loss(STUDENT, TEACHER, 0, 1.0, 1.0) == pytest.approx(kl, rel=1e-6)
    assert _loss(STUDENT, TEACHER, 1, 1.0, 1.0) == pytest.approx(kl, rel=1e-6)


def test_identical_logits_leave_only_the_hard_term():
    logits = [2.0, -1.0, 0.5]
    ce = -math.log(_softmax(logits)[2])
    assert _loss(logits, logits, 2, 2.0, 0.3) == pytest.approx(0.7 * ce, rel=1e-6)


def test_masked_padding_changes_nothing_in_the_soft_term():
    # the same two real positions, then two padding positions with unrelated logits
    plain = _loss(STUDENT, TEACHER, 0, 2.0, 1.0)
    mask = torch.tensor([[1, 1, 0, 0]])
    padded = _loss(STUDENT + [5.0, -3.0], TEACHER + [-7.0, 9.0], 0, 2.0, 1.0, mask=mask)
    assert padded == pytest.approx(plain, rel=1e-6)
    unmasked = _loss(STUDENT + [5.0, -3.0], TEACHER + [-7.0, 9.0], 0, 2.0, 1.0)
    assert unmasked != pytest.approx(plain, rel=1e-3)


def test_start_and_end_are_averaged():
    s = torch.tensor([[0.0, 0.0]])
    t_start, t_end = torch.tensor([[math.log(3.0), 0.0]]), torch.tensor([[0.0, 0.0]])
    gold = torch.tensor([0])
    loss = distillation_loss(s, s, t_start, t_end, gold, gold, 1.0, 1.0).item()
    assert loss == pytest.approx(_kl([0.75, 0.25], [0.5, 0.5]) / 2, rel=1e-6)


def test_gradient_flows_to_the_student_only():
    s = torch.zeros(1, 3, requires_grad=True)
    t = torch.tensor([[1.0, 0.0, -1.0]], requires_grad=True)
    gold = torch.tensor([0])
    distillation_loss(s, s, t, t, gold, gold, 2.0, 0.5).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


@pytest.mark.parametrize(
    ("temperature", "alpha"),
    [(0.0, 0.5), (-1.0, 0.5), (2.0, -0.1), (2.0, 1.5), (float("inf"), 0.5), (float("nan"), 0.5), (2.0, float("nan"))],
)
def test_bad_hyperparameters_are_rejected(temperature, alpha):
    with pytest.raises(ConfigError, match=r"distillation\.(temperature|alpha)"):
        _loss(STUDENT, TEACHER, 0, temperature, alpha)


# --- the layer terms, against float64 references written out loop by loop ---------------------

def _hidden_reference(student, teacher, mask):
    """(1/L) sum_l (1/(N*H)) sum over real i, all d of (s - t)^2, in float64 loops."""
    per_layer = []
    for s, t in zip(student, teacher, strict=True):
        total, count = 0.0, 0
        for b in range(s.shape[0]):
            for i in range(s.shape[1]):
                if mask[b][i]:
                    total += sum((float(x) - float(y)) ** 2 for x, y in zip(s[b, i], t[b, i], strict=True))
                    count += s.shape[2]
        per_layer.append(total / count)
    return sum(per_layer) / len(per_layer)


def _attention_reference(student, teacher, mask):
    """(1/L) sum_l (1/(N*A)) sum over real queries i, heads a of KL over real keys, in float64 loops."""
    per_layer = []
    for s, t in zip(student, teacher, strict=True):
        total, rows = 0.0, 0
        for b in range(s.shape[0]):
            keys = [j for j in range(s.shape[3]) if mask[b][j]]
            for a in range(s.shape[1]):
                for i in keys:  # the real queries are the real positions
                    p = _softmax([float(t[b, a, i, j]) for j in keys])
                    q = _softmax([float(s[b, a, i, j]) for j in keys])
                    total += _kl(p, q)
                    rows += 1
        per_layer.append(total / rows)
    return sum(per_layer) / len(per_layer)


MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])


def test_hidden_state_loss_matches_its_float64_reference():
    gen = torch.Generator().manual_seed(0)
    student = [torch.randn(2, 4, 5, generator=gen, dtype=torch.float64) for _ in range(3)]
    teacher = [torch.randn(2, 4, 5, generator=gen, dtype=torch.float64) for _ in range(3)]
    got = hidden_state_loss(student, teacher, MASK).item()
    assert got == pytest.approx(_hidden_reference(student, teacher, MASK.tolist()), rel=1e-6)
    # padding counts nowhere: changing padded positions changes nothing
    student[0][0, 3] += 100.0
    assert hidden_state_loss(student, teacher, MASK).item() == pytest.approx(got, rel=1e-6)


def test_attention_loss_matches_its_float64_reference():
    gen = torch.Generator().manual_seed(1)
    student = [3 * torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64) for _ in range(2)]
    teacher = [3 * torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64) for _ in range(2)]
    got = attention_loss(student, teacher, MASK).item()
    assert got == pytest.approx(_attention_reference(student, teacher, MASK.tolist()), rel=1e-5)
    assert got > 0
    assert attention_loss(teacher, teacher, MASK).item() == pytest.approx(0.0, abs=1e-6)
    teacher[1][1, :, :, 3] -= 50.0  # scores of a padded key: no probability either way
    assert attention_loss(student, teacher, MASK).item() == pytest.approx(got, rel=1e-6)


def test_zero_layer_weights_give_the_logit_loss_exactly():
    s = torch.randn(2, 5, requires_grad=True)
    t, gold = torch.randn(2, 5), torch.tensor([1, 3])
    logit = distillation_loss(s, s, t, t, gold, gold, 2.0, 0.5)
    terms = {"hidden": torch.tensor(3.0), "attention": torch.tensor(7.0)}
    assert total_loss(logit, **terms, hidden_weight=0.0, attention_weight=0.0) is logit
    both = total_loss(logit, **terms, hidden_weight=0.5, attention_weight=2.0)
    assert both.item() == pytest.approx(logit.item() + 1.5 + 14.0, rel=1e-6)


def test_a_weighted_term_that_was_not_computed_is_an_error():
    with pytest.raises(ValueError, match="hidden_weight is 1.0 but no hidden term"):
        total_loss(torch.tensor(1.0), hidden_weight=1.0)
