"""The probe that sizes `main`'s budget (qa_distill/training/probe.py) times batches like training's."""

from qa_distill.training.probe import typical_rows


def test_the_timed_training_batch_holds_windows_of_about_the_median_length():
    lengths = [40, 256, 120, 256, 60, 130, 256, 125, 128]  # sorted: 40 60 120 125 128 130 256 256 256
    rows = typical_rows(lengths, 3)
    assert sorted(lengths[i] for i in rows) == [125, 128, 130]  # pads to 130, not to 256 as the first 3 would
    assert len(set(rows)) == 3
    assert sorted(typical_rows(lengths, 20)) == list(range(9))  # fewer windows than asked: all of them
    assert [lengths[i] for i in typical_rows(lengths, 1)] == [128]
