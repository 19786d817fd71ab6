"""What a search reports: the trials table, Optuna's plots and the summary of the whole study.

They cover every trial in the storage (other workers' and earlier runs' too), not only this
process's. The parent MLflow run gets the best parameters as params, scores and counts as
metrics, and the table and plots as artifacts under `report/`.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from qa_distill.reporting.tables import write_tables
from qa_distill.search.space import LAYER_WEIGHTS
from qa_distill.search.storage import best_number

log = logging.getLogger(__name__)

REPORT_COLUMNS = ["number", "state", "temperature", "alpha", "f1", "exact_match"]


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial of the whole study (all workers), for the CSV report."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = t.duration.total_seconds() if t.duration else None
        rows.append({
            "number": t.number,
            "state": t.state.name,
            "temperature": t.params.get("temperature"),
            "alpha": t.params.get("alpha"),
            "f1": t.value,
            "exact_match": t.user_attrs.get("exact_match"),
            **{name: t.params[name] for name in (*LAYER_WEIGHTS, "learning_rate") if name in t.params},
            "duration_s": duration,
            "pruned_at_epoch": t.user_attrs.get("pruned_at_epoch"),
            **{k: t.user_attrs.get(k) for k in ("train_questions", "dev_questions", "epochs")},
        })
    frame = pd.DataFrame(rows)
    optional = [c for c in frame.columns if c not in REPORT_COLUMNS]
    return frame.reindex(columns=REPORT_COLUMNS + optional)


# name -> (plot function name shared by the matplotlib and plotly backends, kwargs, complete
# trials it needs to mean anything)
PLOTS: dict[str, tuple[str, dict[str, Any], int]] = {
    "history": ("plot_optimization_history", {}, 0),
    "importances": ("plot_param_importances", {}, 2),
    "contour": ("plot_contour", {}, 0),  # over the searched distillation settings (`searched`)
    "intermediate": ("plot_intermediate_values", {}, 0),
}


def searched(study: optuna.Study) -> list[str]:
    """T, alpha and the layer weights the study's trials sample, named in the contour plot."""
    sampled = {name for t in study.get_trials(deepcopy=False) for name in t.params}
    return ["temperature", "alpha", *(name for name in LAYER_WEIGHTS if name in sampled)]


def write_plots(study: optuna.Study, stem: Path) -> list[Path]:
    """Each plot as PNG (matplotlib backend) and HTML (plotly, its JavaScript inline so the page
    works offline); kaleido cannot render PNG here."""
    import matplotlib.pyplot as plt
    import optuna.visualization as plotly_vis
    import optuna.visualization.matplotlib as mpl_vis

    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, (function, kwargs, needs) in PLOTS.items():
            if complete < needs:
                log.info("no %s plot: %d complete trials, it needs %d", name, complete, needs)
                continue
            png, html = (stem.with_name(f"{stem.name}-{name}.{ext}") for ext in ("png", "html"))
            kwargs = {"params": searched(study)} if name == "contour" else kwargs
            axes = getattr(mpl_vis, function)(study, **kwargs)
            figure = np.ravel(axes)[0].figure  # contour of 2 params is one Axes; more give a grid
            figure.savefig(png, dpi=100, bbox_inches="tight")
            plt.close(figure)
            getattr(plotly_vis, function)(study, **kwargs).write_html(html, include_plotlyjs=True)
            written += [png, html]
    return written


def write_report(study: optuna.Study, stem: Path) -> list[Path]:
    """The trials table and the plots, as `<stem>.csv|md`, `<stem>-<plot>.png|html`."""
    return [*write_tables(trials_frame(study), stem), *write_plots(study, stem)]


def summarise(study: optuna.Study, trials_run: list[int]) -> dict[str, Any]:
    """Best trial and counts over the whole study; `trials_run` are this process's trials."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    summary: dict[str, Any] = {
        "study_name": study.study_name,
        "n_trials": len(states),
        "n_complete": states.count(TrialState.COMPLETE),
        "n_pruned": states.count(TrialState.PRUNED),
        "n_failed": states.count(TrialState.FAIL),
        "trials_run": trials_run,
        "best_trial": best_number(study),
    }
    if summary["best_trial"] is not None:
        best = study.best_trial
        summary |= {f"best_{k}": v for k, v in best.params.items()}
        summary |= {"best_f1": best.value, "best_exact_match": best.user_attrs.get("exact_match")}
    return summary


def log_summary(summary: dict[str, Any], files: list[Path]) -> None:
    """Best parameters as params, scores and counts as metrics, report files as artifacts."""
    numbers = ("best_f1", "best_exact_match", "n_trials", "n_complete", "n_pruned", "n_failed",
               "wall_seconds")
    mlflow.log_metrics({k: float(summary[k]) for k in numbers if summary.get(k) is not None})
    params = ("best_temperature", "best_alpha", *(f"best_{name}" for name in LAYER_WEIGHTS), "best_learning_rate",
              "best_trial")
    mlflow.log_params({k: summary[k] for k in params if summary.get(k) is not None})
    for path in files:
        mlflow.log_artifact(str(path), artifact_path="report")
