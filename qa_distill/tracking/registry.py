"""Registered model versions: which exact version a source names, and how fast it answers.

A `models:/<name>/latest` (or a stage, or `@alias`) names a different version as soon as a new
one is registered, so the speed test resolves it once, before timing, and from then on uses and
records `models:/<name>/<version>`. Its figures are then written onto that version as tags
(`latency.<backend>.<figure>`, `latency.cpu`, `latency.threads`, `latency.run_id`): the registry
itself tells how fast, and how accurately, a version answers on which CPU. Tags are many, so each
version also gets a description of a few lines that the UI shows first (EM/F1 of its run, p50
per backend and the CPU), and the best distilled version of a recipe (by F1) the alias
`champion`: `models:/qa-distill-cpu-distill@champion` is what to serve or time.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.utils.models import get_model_name_and_version

from qa_distill.errors import ModelError

# the speed-table figures each measured version is tagged with, per backend
LATENCY_FIGURES = ("p50_ms", "p90_ms", "p99_ms", "questions_per_s", "exact_match", "f1")
PREFIX = "latency."
CHAMPION = "champion"  # alias of the best (dev F1) version of a recipe's distilled model


@dataclass(frozen=True)
class ModelVersionRef:
    """One registered model version."""

    name: str
    version: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def label(self) -> str:
        """`name/version`, as tables show it."""
        return f"{self.name}/{self.version}"


def exact_version(source: str) -> ModelVersionRef | None:
    """The registered version a `models:/` source names now (MLflow's own resolution of
    `latest`, stages and aliases); None for any other source (a path, a hub name, `runs:/`, a
    logged model's `models:/<model id>`)."""
    if not source.startswith("models:/"):
        return None
    try:
        found = get_model_name_and_version(MlflowClient(), source)
    except MlflowException as exc:
        raise ModelError(f"{source}: {exc.message}") from None
    return ModelVersionRef(found[0], str(found[1])) if len(found) == 2 else None


def pin_versions(models: dict[str, str]) -> tuple[dict[str, str], dict[str, ModelVersionRef]]:
    """Display name -> source with every registry source pinned to its exact version, and
    display name -> that version (registry sources only)."""
    versions = {name: ref for name, source in models.items() if (ref := exact_version(source))}
    pinned = {name: versions[name].uri if name in versions else source for name, source in models.items()}
    return pinned, versions


def latency_tags(rows: pd.DataFrame, run_id: str, *, cpu: str, threads: int) -> dict[str, str]:
    """The tags of one model's speed-table rows (one per backend)."""
    tags = {
        f"{PREFIX}{row['backend']}.{figure}": f"{float(row[figure]):.6g}"
        for row in rows.to_dict("records")
        for figure in LATENCY_FIGURES
    }
    return tags | {f"{PREFIX}cpu": cpu, f"{PREFIX}threads": str(threads), f"{PREFIX}run_id": run_id}


def tag_versions(
    versions: dict[str, ModelVersionRef], table: pd.DataFrame, run_id: str, *, cpu: str, threads: int
) -> None:
    """Write each measured version's figures from the speed table onto it."""
    client = MlflowClient()
    for name, ref in versions.items():
        for key, value in latency_tags(table[table["model"] == name], run_id, cpu=cpu, threads=threads).items():
            client.set_model_version_tag(ref.name, ref.version, key, value)
        describe_version(ref)


def run_latency(run_id: str, *, figure: str = "p50_ms") -> dict[str, object]:
    """`version` (name/number) of the newest version registered from a training run, and its
    `<backend>_<figure>` tags as numbers; empty if the run registered none."""
    found = MlflowClient().search_model_versions(f"run_id = '{run_id}'")
    if not found:
        return {}
    newest = max(found, key=lambda v: int(v.version))
    out: dict[str, object] = {"version": ModelVersionRef(newest.name, str(newest.version)).label}
    suffix = f".{figure}"
    for key, value in sorted(newest.tags.items()):
        if key.startswith(PREFIX) and key.endswith(suffix):
            out[f"{key[len(PREFIX) : -len(suffix)]}_{figure}"] = float(value)
    return out


def with_latency(results: pd.DataFrame, *, figure: str = "p50_ms") -> pd.DataFrame:
    """Per-model results (a `run_id` column) with their registered version and its latency per
    backend beside them, read from the version's tags; rows without a version stay as they are."""
    if results.empty:
        return results
    extra = pd.DataFrame([run_latency(run_id, figure=figure) for run_id in results["run_id"]], index=results.index)
    return pd.concat([results, extra], axis=1)


def version_description(metrics: dict[str, float], tags: dict[str, str]) -> str:
    """A version's description: its run's EM/F1, then p50 per backend and the CPU once timed."""
    lines = []
    if "f1" in metrics:
        lines.append(f"EM {metrics.get('exact_match', float('nan')):.2f} / F1 {metrics['f1']:.2f} on "
                     f"{int(metrics.get('dev_questions', 0))} dev questions.")
    p50 = {key[len(PREFIX):-len(".p50_ms")]: float(value) for key, value in tags.items()
           if key.startswith(PREFIX) and key.endswith(".p50_ms")}
    if p50:
        timed = ", ".join(f"{backend} {ms:.2f} ms" for backend, ms in sorted(p50.items(), key=lambda kv: kv[1]))
        lines.append(f"p50 at batch 1: {timed} ({tags.get(PREFIX + 'threads', '?')} threads, "
                     f"{tags.get(PREFIX + 'cpu', 'unknown CPU')}).")
    return "\n".join(lines)


def describe_version(ref: ModelVersionRef) -> None:
    """Write the version's description from its run's metrics and its latency tags."""
    client = MlflowClient()
    found = client.get_model_version(ref.name, ref.version)
    metrics = client.get_run(found.run_id).data.metrics if found.run_id else {}
    client.update_model_version(ref.name, ref.version, description=version_description(metrics, found.tags))


def describe_registered(run_id: str, *, champion: bool = False) -> list[ModelVersionRef]:
    """Describe the versions a training run registered; with `champion`, give the alias to the
    version of each name whose run has the best F1 (the newest on a tie)."""
    client = MlflowClient()
    refs = [ModelVersionRef(v.name, str(v.version)) for v in client.search_model_versions(f"run_id = '{run_id}'")]
    for ref in refs:
        describe_version(ref)
    for name in {ref.name for ref in refs} if champion else ():
        scored = [(_run_f1(client, v.run_id), int(v.version)) for v in client.search_model_versions(f"name = '{name}'")]
        client.set_registered_model_alias(name, CHAMPION, str(max(scored)[1]))
    return refs


def _run_f1(client: MlflowClient, run_id: str | None) -> float:
    try:
        return float(client.get_run(run_id).data.metrics.get("f1", float("-inf"))) if run_id else float("-inf")
    except MlflowException:  # the run was deleted
        return float("-inf")
