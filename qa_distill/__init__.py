"""qa-distill: task-specific knowledge distillation of extractive QA models on SQuAD v1.1."""

__version__ = "0.1.0"

from qa_distill.import_notes import drop_import_notes

drop_import_notes()
