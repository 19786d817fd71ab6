"""Windows: labels on the answer tokens, CLS outside, offsets for eval, an on-disk cache."""

import unicodedata

from transformers import AutoTokenizer

from qa_distill.config import DataConfig
from qa_distill.data.features import build_features
from qa_distill.data.squad import load_split

from .conftest import minilm_path


def _plain(text: str) -> str:
    """Lower case, no accents, no spaces: how the uncased tokenizer sees text."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c) and not c.isspace())


def _tokenizer():
    return AutoTokenizer.from_pretrained(minilm_path())


def test_train_labels_cover_the_windows_own_answer_or_point_at_cls(dev_sample, tmp_path):
    tok = _tokenizer()
    split = load_split(DataConfig(data=str(dev_sample)), "train")
    feats = build_features(split, tok, max_length=96, doc_stride=32, kind="train", cache=str(tmp_path))
    # eval windows are the same windows in the same order, and say which question each is for
    questions = build_features(split, tok, max_length=96, doc_stride=32, kind="eval", cache=str(tmp_path))
    assert len(feats) > len(split.dataset)  # long contexts give several windows
    assert feats["input_ids"] == questions["input_ids"]
    by_id = {r["id"]: r for r in split.dataset}
    inside = outside = 0
    for f, q in zip(feats, questions, strict=True):
        record = by_id[q["example_id"]]
        gold_start = record["answers"]["answer_start"][0]
        gold_end = gold_start + len(record["answers"]["text"][0])
        context = [o for o in q["offset_mapping"] if o[0] >= 0]
        s, e = f["start_positions"], f["end_positions"]
        if s == 0 and e == 0:
            outside += 1
            # CLS only where the window does not hold the whole answer
            assert context[0][0] > gold_start or context[-1][1] < gold_end
            continue
        inside += 1
        # the labelled tokens are the smallest run of tokens around this question's first answer
        # (a token may be wider than the answer: "gold" inside "golden")
        first, last = q["offset_mapping"][s], q["offset_mapping"][e]
        assert first[0] <= gold_start < first[1] and last[0] < gold_end <= last[1], record["id"]
        answer = _plain(record["answers"]["text"][0])
        assert answer in _plain(tok.decode(f["input_ids"][s : e + 1])), record["id"]
    assert inside > 0 and outside > 0
    assert feats["length"] == [len(x) for x in feats["input_ids"]]
    assert max(feats["length"]) <= 96


def test_eval_offsets_mark_only_context_tokens(dev_sample, tmp_path):
    tok = _tokenizer()
    split = load_split(DataConfig(data=str(dev_sample)), "dev")
    feats = build_features(split, tok, max_length=128, doc_stride=64, kind="eval", cache=str(tmp_path))
    contexts = dict(zip(split.dataset["id"], split.dataset["context"], strict=True))
    f = feats[0]
    seq = [i for i, (a, b) in enumerate(f["offset_mapping"]) if a >= 0]
    assert seq and f["offset_mapping"][0] == [-1, -1]  # CLS is not context
    a, b = f["offset_mapping"][seq[0]]
    assert contexts[f["example_id"]][a:b].lower() == tok.decode([f["input_ids"][seq[0]]]).replace("##", "")


def test_second_build_reads_the_disk_cache(dev_sample, tmp_path):
    tok = _tokenizer()
    split = load_split(DataConfig(data=str(dev_sample)), "train")
    first = build_features(split, tok, max_length=96, doc_stride=32, kind="train", cache=str(tmp_path))
    files = sorted(p.name for p in tmp_path.glob("features-*.arrow"))
    assert len(files) == 1
    again = build_features(split, tok, max_length=96, doc_stride=32, kind="train", cache=str(tmp_path))
    assert again.cache_files and again.cache_files[0]["filename"].endswith(files[0])
    assert again["input_ids"] == first["input_ids"]
    build_features(split, tok, max_length=128, doc_stride=32, kind="train",
                   cache=str(tmp_path))  # other windows, other file
    assert len(list(tmp_path.glob("features-*.arrow"))) == 2
