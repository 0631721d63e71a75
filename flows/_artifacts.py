"""Artifacts the flows publish: a markdown summary per flow run and a table of metrics.

Links into MLflow are built from the tracking URI when it is an ``http(s)://`` server (a sqlite store has no UI, so
the summary names the store instead). The Prefect flow run's own URL comes from ``prefect.runtime``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from brandtune.settings import Settings


def artifact_key(*parts: str) -> str:
    """A valid artifact key (lower-case letters, digits and dashes) from ``parts``."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:200]


def _ui(settings: Settings) -> str | None:
    uri = settings.tracking_uri
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else None


def run_link(settings: Settings, run_id: str, experiment_id: str | None = None) -> str:
    """Markdown for an MLflow run: a link when the tracking server has a UI, else the id and store."""
    ui = _ui(settings)
    if ui and experiment_id:
        return f"[{run_id}]({ui}/#/experiments/{experiment_id}/runs/{run_id})"
    return f"`{run_id}`" + ("" if ui else f" (store `{settings.tracking_uri}`)")


def version_link(settings: Settings, model: str, version: str | None) -> str:
    """Markdown for a registered model version (``-`` when there is none)."""
    if not version:
        return "-"
    ui = _ui(settings)
    text = f"{model} v{version}"
    return f"[{text}]({ui}/#/models/{model}/versions/{version})" if ui else f"`{text}`"


def flow_run_ref() -> tuple[str | None, str | None]:
    """The current flow run's id and UI URL (the URL is None without a UI, e.g. on the ephemeral API)."""
    from prefect.settings import PREFECT_UI_URL

    run_id = flow_run.get_id()
    ui = PREFECT_UI_URL.value()
    return run_id, (f"{ui.rstrip('/')}/runs/flow-run/{run_id}" if run_id and ui else None)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table from dict rows (columns: the union of keys, in first-seen order)."""
    if not rows:
        return "_none_"
    cols: list[str] = []
    for row in rows:
        cols += [c for c in row if c not in cols]
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    lines += ["| " + " | ".join(_fmt(row.get(c, "")) for c in cols) + " |" for row in rows]
    return "\n".join(lines)


def metric_rows(metrics: Mapping[str, Mapping[str, float]]) -> list[dict[str, Any]]:
    """``{model: {metric: value}}`` as rows ``{metric, <model>...}`` (one row per metric)."""
    names = sorted({m for per_model in metrics.values() for m in per_model})
    return [
        {"metric": m, **{model: vals.get(m, float("nan")) for model, vals in metrics.items()}} for m in names
    ]


def publish(
    flow: str,
    brand: str,
    title: str,
    facts: Sequence[tuple[str, str]],
    metrics: Sequence[Mapping[str, Any]] | None = None,
    extra: str = "",
) -> None:
    """Publish the flow run's markdown summary (and a table artifact of ``metrics`` when given).

    Args:
        flow: Flow name (part of the artifact keys: ``<flow>-<brand>-summary`` / ``-metrics``).
        brand: Brand slug.
        title: First heading of the summary.
        facts: ``(label, markdown value)`` pairs shown as a two-column table.
        metrics: Rows for the metrics table.
        extra: More markdown appended at the end.
    """
    run_id, url = flow_run_ref()
    parts = [f"# {title}", "", markdown_table([{"": k, "value": v} for k, v in facts])]
    if metrics:
        parts += ["", "## Metrics", "", markdown_table(metrics)]
    if extra:
        parts += ["", extra]
    if run_id:
        parts += ["", f"Prefect flow run: {f'[{run_id}]({url})' if url else f'`{run_id}`'}"]
    create_markdown_artifact(
        "\n".join(parts), key=artifact_key(flow, brand, "summary"), description=f"{title} ({brand})"
    )
    if metrics:
        table = [
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in metrics
        ]
        create_table_artifact(table, key=artifact_key(flow, brand, "metrics"), description=f"{flow} metrics")
