"""A model card per registered version: what a reviewer asks about a model, in one document.

Everything on it is read from where the platform already records it: the version's tags and
training plan (data, lineage, metrics), its MLflow run (row counts, the gate evaluation), the
booster (feature importance), the audit log (approvals, promotions, rollbacks, erasures), the
drift metrics and live performance tables. Markdown for the Dagster UI and review tools; HTML to
open in a browser; both logged to the version's MLflow run.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.home import MlopsHome
from mlops_assets.core.names import ERASED_TAG, GATES_ARTIFACT, GATES_TAG, LIVE_PERFORMANCE, STATUS_TAG
from resources.audit_log import history
from resources.delta_lake import DeltaLakeResource
from resources.mlflow_registry import MlflowRegistryResource
from resources.pipeline_tables import drift_reports
from resources.registered_models import get_version, load_booster, metrics_of, plan_of


@dataclass(frozen=True)
class ModelCard:
    pipeline: str
    version: int
    markdown: str

    def html(self) -> str:
        import markdown

        body = markdown.markdown(self.markdown, extensions=["tables"])
        style = (
            "body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em;line-height:1.45}"
            "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
            "th{background:#f4f4f4}code{background:#f4f4f4;padding:0 .2em}"
        )
        return f"<!doctype html><html><head><meta charset='utf-8'><title>{self.pipeline} v{self.version} model card</title><style>{style}</style></head><body>{body}</body></html>"


def _table(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return "_none_\n"

    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape(str(v)).replace("|", "\\|").replace("\n", " ")  # reasons are free text: never markup

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _run_link(mlflow: MlflowRegistryResource, run) -> str:
    """The run's id, linked to its page in the MLflow UI where the platform knows the UI's address (ui_url)."""
    if not mlflow.ui_url:
        return run.info.run_id
    return f"[{run.info.run_id}]({mlflow.run_url(run.info.experiment_id, run.info.run_id)})"


def gate_evaluation(mlflow: MlflowRegistryResource, run_id: str) -> dict | None:
    """The gates' full evaluation as logged on the version's run, or None before the gates ran."""
    import mlflow as mlflow_module
    from mlflow.exceptions import MlflowException

    try:
        with mlflow.writing():
            return mlflow_module.artifacts.load_dict(f"runs:/{run_id}/{GATES_ARTIFACT}")
    except FileNotFoundError:
        return None  # not logged: the gates have not evaluated this version
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise  # a store that did not answer: the card run fails (and is asked for again), not a card saying "not evaluated"


def build_card(decl: PipelineDeclaration, delta: DeltaLakeResource, mlflow: MlflowRegistryResource, version: int) -> ModelCard:
    client = mlflow.client()
    mv = get_version(client, decl.name, version)
    plan = plan_of(mv)
    run = client.get_run(mv.run_id) if mv.run_id else None
    run_metrics = run.data.metrics if run else {}
    tags = mv.tags
    md: list[str] = [f"# Model card: {decl.name} v{version}\n"]
    status = html.escape(tags.get(STATUS_TAG, "unknown"))  # registry tags anyone with registry access can edit: never markup
    aliases = ", ".join(f"`{a}`" for a in sorted(mv.aliases)) or "none"
    md.append(f"Status **{status}**; aliases {aliases}; gates {html.escape(tags.get(GATES_TAG, 'not run'))}.")
    if tags.get(ERASED_TAG):
        md.append(
            f"\n**Rows this version trained on were erased** (erasure `{tags[ERASED_TAG]}`): it cannot be reproduced and is due for replacement."
        )

    md.append("\n## Intended use\n")
    md.append(html.escape(decl.description) if decl.description else "_No description declared (`description` in the declaration)._")
    classes = f" over classes {plan.classes}" if plan.classes else ""
    md.append(f"\n{plan.task.capitalize()} model of `{plan.target}`{classes}; promotion policy `{decl.promotion.policy}`.")

    md.append("\n## Data\n")
    data_rows = [
        {"what": "features table", "value": f"{plan.features_table} at Delta version {plan.features_version}"},
        {"what": "days", "value": f"{plan.partition_start} .. {plan.partition_end}"},
        {"what": "validation (early stopping) from", "value": plan.validation_start},
        {"what": "hold-out (gates) from", "value": plan.holdout_start},
        *[
            {"what": f"{k.replace('_', ' ')}", "value": int(run_metrics[k])}
            for k in ("train_rows", "validation_rows", "holdout_rows")
            if k in run_metrics
        ],
        {"what": "rows left out", "value": f"{int(run_metrics.get('rows_without_target', 0))} ({plan.missing_reason})"},
    ]
    md.append(_table(data_rows, ["what", "value"]))

    md.append("## Lineage\n")
    lineage = [
        {"what": k.removeprefix("mlops."), "value": tags[k]}
        for k in (
            "mlops.git_commit",
            "mlops.git_dirty",
            "mlops.declaration_hash",
            "mlops.feature_code_hash",
            "mlops.dagster_run_id",
            "mlops.training_engine",
        )
        if k in tags
    ]
    lineage.append({"what": "mlflow run", "value": _run_link(mlflow, run) if run else "none"})
    md.append(_table(lineage, ["what", "value"]))

    md.append("## Features and their importance\n")
    booster = load_booster(mlflow, decl.name, version)
    gains = dict(zip(booster.feature_name(), booster.feature_importance("gain").tolist()))
    total = sum(gains.values()) or 1.0
    features = [
        {"feature": f, "kind": "categorical" if f in plan.categorical_features else "numeric", "gain share": g / total}
        for f, g in sorted(gains.items(), key=lambda kv: -kv[1])
    ]
    md.append(_table(features, ["feature", "kind", "gain share"]))

    md.append("## Metrics\n")
    validation, holdout = metrics_of(mv), metrics_of(mv, "holdout.")
    md.append(
        _table(
            [{"metric": k, "validation": v, "hold-out": holdout.get(k, "")} for k, v in sorted(validation.items())],
            ["metric", "validation", "hold-out"],
        )
    )

    md.append("## Gates\n")
    evaluation = gate_evaluation(mlflow, mv.run_id) if mv.run_id else None
    fairness = None
    if evaluation is None:
        md.append("_The gates have not evaluated this version._\n")
    else:
        md.append(f"Compared on {evaluation['holdout_rows']} hold-out rows with champion {evaluation.get('champion_version') or 'none'}.\n")
        md.append(
            _table(
                [
                    {"gate": g["name"], "passed": "yes" if g["passed"] else "**no**", "comparison": g["description"]}
                    for g in evaluation["gates"]
                ],
                ["gate", "passed", "comparison"],
            )
        )
        fairness = next((g for g in evaluation["gates"] if g["name"] == "fairness"), None)

    md.append("## Fairness\n")
    if fairness is None:
        md.append("_No fairness gate declared (`gates.fairness`)._\n" if decl.gates.fairness is None else "_Not evaluated yet._\n")
    else:
        meta = fairness["metadata"]
        md.append(f"Hold-out `{meta['metric']}` per group; largest relative gap {meta['largest_gap']:.1%} (limit {meta['max_gap']:.1%}).\n")
        md.append(_table(meta["groups"], ["column", "group", "rows", meta["metric"], "gated"]))

    md.append("## Approval and promotion history\n")
    events = history(delta, decl.name).filter((pl.col("model_version") == version) | (pl.col("from_version") == version))
    md.append(
        _table(
            [
                {
                    "at": r["at"].isoformat(timespec="seconds"),
                    "action": r["action"],
                    "version": r["model_version"],
                    "from": r["from_version"] or "",
                    "who": r["actor"],
                    "why": r["reason"],
                }
                for r in events.iter_rows(named=True)
            ],
            ["at", "action", "version", "from", "who", "why"],
        )
    )

    md.append("## Drift since training\n")
    drift = drift_reports(delta, decl.name).filter(pl.col("model_version") == version)
    md.append(
        _table(
            [
                {
                    "at": r["computed_at"].isoformat(timespec="seconds"),
                    "source": r["source"],
                    "window": r["window"],
                    "drift share": r["drift_share"],
                    "alert": r["alert_reason"] or "no",
                }
                for r in drift.iter_rows(named=True)
            ],
            ["at", "source", "window", "drift share", "alert"],
        )
    )

    md.append("## Live performance\n")
    live = delta.scan(decl.name, LIVE_PERFORMANCE)
    live_rows = live.filter(pl.col("model_version") == version).collect().sort("day").to_dicts() if live is not None else []
    md.append(
        _table(live_rows, list(live_rows[0]) if live_rows else []) if live_rows else "_No labelled live traffic for this version yet._\n"
    )
    return ModelCard(decl.name, version, "\n".join(md))


def write_card(card: ModelCard, mlflow: MlflowRegistryResource, run_id: str | None) -> tuple[Path, Path]:
    """The card as files under $MLOPS_HOME/reports/<pipeline>/model_cards, and logged to the version's run."""
    folder = MlopsHome.from_env().reports / card.pipeline / "model_cards"
    folder.mkdir(parents=True, exist_ok=True)
    md_path, html_path = folder / f"v{card.version}.md", folder / f"v{card.version}.html"
    md_path.write_text(card.markdown)
    html_path.write_text(card.html())
    if run_id:
        with mlflow.writing() as client:
            for path in (md_path, html_path):
                client.log_artifact(run_id, str(path), artifact_path="model_card")
    return md_path, html_path
