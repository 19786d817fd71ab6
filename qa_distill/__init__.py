"""qa-distill: task-specific knowledge distillation of extractive QA models on SQuAD v1.1."""

__version__ = "0.1.0"

import os

from qa_distill.runtime.import_notes import drop_import_notes

drop_import_notes()
# oneDNN (the int8 and bf16 matrix products of compiled models) caches 1,024 kernels, each built
# for one shape; windows come in hundreds of lengths, so a process with several models and
# precisions outgrows that and rebuilds kernels call after call: with the speed test's nine in
# one process, compiled int8 measured 1.4x slower. oneDNN reads this when it builds its first kernel.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")
