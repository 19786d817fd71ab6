"""SQuAD data: reading and checking the JSON, windows (features), answers from logits, EM/F1."""
