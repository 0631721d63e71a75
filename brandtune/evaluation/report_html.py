"""The evaluation report's files: ``report.json`` and a self-contained ``report.html`` (inline CSS, images embedded
as base64 PNG) that opens from an MLflow artifact view, an e-mail attachment or a file share.

The page is written for the people who decide on a campaign: the decision first, then the pictures side by side,
then the numbers with their confidence intervals and which way is better. The data it shows is
:class:`~brandtune.evaluation.report.EvalResults`.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from brandtune.errors import EvaluationError
from brandtune.evaluation.metrics import METRIC_DESCRIPTIONS, METRIC_DIRECTIONS
from brandtune.evaluation.report import EvalResults, MetricStats, aggregate
from brandtune.fsutil import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

THUMB_MAX = 256  # embedded images larger than this (px, long side) are downscaled to keep the HTML small

CSS = """
:root { --ink:#1d2430; --muted:#5b6575; --line:#e3e7ee; --bg:#f6f7fa; --ok:#137a3b; --okbg:#e5f5eb;
        --bad:#b42318; --badbg:#fdecea; --skip:#6b7280; --accent:#1f6feb; }
* { box-sizing:border-box; }
body { margin:0; font:15px/1.45 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color:var(--ink); background:var(--bg); }
main { max-width:1240px; margin:0 auto; padding:28px 24px 60px; }
h1 { font-size:26px; margin:0 0 4px; } h2 { font-size:19px; margin:34px 0 12px; }
.sub { color:var(--muted); margin:0 0 18px; }
.card { background:#fff; border:1px solid var(--line); border-radius:10px; padding:16px 18px; margin:0 0 16px; }
.decision { display:flex; gap:16px; align-items:center; border-radius:10px; padding:16px 20px; margin:18px 0; }
.decision.pass { background:var(--okbg); border:1px solid #b7e3c6; }
.decision.fail { background:var(--badbg); border:1px solid #f5c2bd; }
.decision ul.why { margin:0 0 4px; padding-left:18px; }
.decision .big { font-size:22px; font-weight:700; white-space:nowrap; }
.decision.pass .big { color:var(--ok); } .decision.fail .big { color:var(--bad); }
table { border-collapse:collapse; width:100%; }
th, td { text-align:left; padding:8px 10px; border-bottom:1px solid var(--line); vertical-align:top; }
th { font-size:12px; text-transform:uppercase; letter-spacing:.04em; color:var(--muted); font-weight:600; }
td.num { font-variant-numeric:tabular-nums; white-space:nowrap; }
.ci { display:block; color:var(--muted); font-size:12px; }
.best { background:#eef5ff; } .best .val { font-weight:700; color:var(--accent); }
.arrow { color:var(--muted); font-size:12px; white-space:nowrap; }
.desc { display:block; color:var(--muted); font-size:12px; max-width:420px; }
.badge { display:inline-block; padding:1px 8px; border-radius:999px; font-size:12px; font-weight:600; }
.badge.pass { background:var(--okbg); color:var(--ok); } .badge.fail { background:var(--badbg); color:var(--bad); }
.badge.skipped { background:#eef0f3; color:var(--skip); }
.prompt { margin:0 0 8px; font-weight:600; } .prompt span { color:var(--muted); font-weight:400; }
.grid { display:grid; gap:12px; }
.cell { background:#fff; border:1px solid var(--line); border-radius:10px; padding:10px; }
.cell h3 { font-size:13px; margin:0 0 8px; color:var(--muted); font-weight:600; }
.shots { display:grid; gap:8px; }
figure { margin:0; min-width:0; } figure img { display:block; width:100%; max-width:256px; height:auto;
  border-radius:6px; background:#ddd; image-rendering:pixelated; } figure img.smooth { image-rendering:auto; }
figcaption { font-size:11px; color:var(--muted); text-align:center; margin-top:2px; }
.missing { width:100%; aspect-ratio:1; border-radius:6px; background:repeating-linear-gradient(45deg,#eee,#eee 8px,#f7f7f7 8px,#f7f7f7 16px);
  display:flex; align-items:center; justify-content:center; font-size:11px; color:var(--muted); }
dl.kv { display:grid; grid-template-columns:max-content 1fr; gap:4px 14px; margin:0; }
dl.kv dt { color:var(--muted); } dl.kv dd { margin:0; }
footer { color:var(--muted); font-size:12px; margin-top:40px; }
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: float | None) -> str:
    """A number for people: 3 significant digits, no exponent for everyday magnitudes."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 1 or magnitude == 0:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _reference(rule: Mapping[str, Any]) -> str:
    """The value the candidate was compared with, and whose it is."""
    against = rule.get("against")
    if against not in ("champion", "base"):
        return "–"
    value = rule.get(against)
    return f"{fmt(value)}<span class='ci'>{'champion' if against == 'champion' else 'base model'}</span>"


def _bound(rule: Mapping[str, Any]) -> str:
    """The bound; for a paired rule also the interval of the improvement it was checked against."""
    bound = fmt(rule.get("threshold"))
    if rule.get("ci_low") is None:
        return bound
    return (
        f"margin {bound}<span class='ci'>improvement {fmt(rule.get('improvement'))}, interval "
        f"{fmt(rule.get('ci_low'))} – {fmt(rule.get('ci_high'))} · {rule.get('pairs')} pairs</span>"
    )


def _decision(gate: Mapping[str, Any] | None) -> str:
    if not gate:
        return ""
    passed = bool(gate.get("passed"))
    verdict = "Promote candidate" if passed else "Do not promote"
    rows, said = [], []
    for rule in gate.get("rules", []):
        status = esc(rule.get("status", ""))
        words = rule.get("explanation") or ""
        if words and rule.get("status") != "skipped":
            said.append(f"<li>{esc(words)}</li>")
        rows.append(
            f"<tr><td>{esc(rule.get('rule', ''))}</td><td class='num'>{fmt(rule.get('candidate'))}</td>"
            f"<td class='num'>{_reference(rule)}</td><td class='num'>{_bound(rule)}</td>"
            f"<td><span class='badge {status}'>{status}</span></td>"
            f"<td>{esc(words)}<span class='ci'>{esc(rule.get('reason', ''))}</span></td></tr>"
        )
    why = f"<ul class='why'>{''.join(said)}</ul>" if said else ""
    return (
        f"<div class='decision {'pass' if passed else 'fail'}'><div class='big'>{verdict}</div>"
        f"<div>{why}<div class='ci'>{esc(gate.get('summary', ''))}</div></div></div>"
        "<div class='card'><table><thead><tr><th>Rule</th><th>Candidate</th><th>Compared with</th>"
        f"<th>Bound</th><th>Result</th><th>Why</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _overview(results: EvalResults) -> str:
    s = results.sampler
    shape = ", ".join(f"{a} {w}x{h}" for a, (w, h) in s.sizes.items()) if s.sizes else f"{s.width}x{s.height}"
    sampler = f"{s.scheduler or 'default scheduler'}, {s.steps} steps, guidance {s.guidance_scale:g}, {shape}"
    if s.negative_prompt:
        sampler += f", negative prompt “{s.negative_prompt}”"
    models = "".join(
        f"<tr><td><b>{esc(m.label)}</b></td><td>{esc(m.version or '–')}</td><td>{esc(m.uri or '–')}</td>"
        f"<td>{esc(m.base_model)}</td></tr>"
        for m in results.models
    )
    return (
        "<div class='card'><dl class='kv'>"
        f"<dt>Prompts × seeds</dt><dd>{len(results.prompts)} × {len(results.seeds)} "
        f"(seeds {esc(', '.join(str(x) for x in results.seeds))})</dd>"
        f"<dt>Sampler</dt><dd>{esc(sampler)} — the same for every model</dd></dl></div>"
        "<div class='card'><table><thead><tr><th>Model</th><th>Version</th><th>URI</th><th>Base model</th>"
        f"</tr></thead><tbody>{models}</tbody></table></div>"
    )


def _best(values: dict[str, float], direction: str | None) -> set[str]:
    finite = {k: v for k, v in values.items() if math.isfinite(v)}
    if direction is None or len(finite) < 2 or len(set(finite.values())) == 1:
        return set()
    target = max(finite.values()) if direction == "higher" else min(finite.values())
    return {k for k, v in finite.items() if v == target}


def _metric_table(
    results: EvalResults, directions: Mapping[str, str], descriptions: Mapping[str, str]
) -> str:
    keys = [m.key for m in results.models]
    names = {n for stats in results.aggregates.values() for n in stats}
    names |= {n for stats in results.set_metrics.values() for n in stats}
    order = list(directions)
    ordered = sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))
    head = "".join(f"<th>{esc(m.label)}</th>" for m in results.models)
    rows = []
    for name in ordered:
        direction = directions.get(name)
        arrow = {"higher": "↑ higher is better", "lower": "↓ lower is better"}.get(direction or "", "")
        means: dict[str, float] = {}
        cells: dict[str, str] = {}
        for key in keys:
            stats = results.aggregates.get(key, {}).get(name)
            if stats is not None:
                means[key] = stats.mean
                cells[key] = (
                    f"<span class='val'>{fmt(stats.mean)}</span>"
                    f"<span class='ci'>95% CI {fmt(stats.ci_low)} – {fmt(stats.ci_high)} · n={stats.n}</span>"
                )
            elif name in results.set_metrics.get(key, {}):
                means[key] = results.set_metrics[key][name]
                cells[key] = f"<span class='val'>{fmt(means[key])}</span><span class='ci'>whole set</span>"
        best = _best(means, direction)
        tds = "".join(f"<td class='num{' best' if k in best else ''}'>{cells.get(k, '–')}</td>" for k in keys)
        rows.append(
            f"<tr><td><b>{esc(name)}</b> <span class='arrow'>{arrow}</span>"
            f"<span class='desc'>{esc(descriptions.get(name, ''))}</span></td>{tds}</tr>"
        )
    return (
        f"<div class='card'><table><thead><tr><th>Metric</th>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _figure(row: Any, data_uri: str | None, size: int) -> str:
    tip = " · ".join(f"{k} {fmt(v)}" for k, v in sorted(row.metrics.items()))
    caption = f"seed {row.seed}" + (f" · {row.aspect}" if row.aspect else "")
    if data_uri is None:
        return f"<figure><div class='missing'>image missing</div><figcaption>{esc(caption)}</figcaption></figure>"
    smooth = " class='smooth'" if size >= 192 else ""
    return (
        f"<figure><img{smooth} src='{data_uri}' alt='{esc(caption)}' title='{esc(tip)}'>"
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def _brand_photos(results: EvalResults, embed: Callable[[str], str | None]) -> str:
    """The "Brand photos" section: a few training photos, background dimmed where a mask marks the product; one
    line when there are none (no dataset here). Empty for results made without the section."""
    if not results.brand_photos and not results.brand_photos_note:
        return ""
    head = "<h2>Brand photos</h2>"
    if not results.brand_photos:
        return f"{head}<p class='sub'>{esc(results.brand_photos_note)}</p>"
    figures = []
    for photo in results.brand_photos:
        uri = embed(photo.image)
        what = (
            f"mask, {photo.coverage:.0%} product" if photo.mask and photo.coverage is not None else "no mask"
        )
        caption = f"{photo.source[:10]} · {what}"
        img = (
            f"<img src='{uri}' alt='{esc(photo.source)}' title='{esc(photo.source)}'>"
            if uri
            else "<div class='missing'>image missing</div>"
        )
        figures.append(f"<figure class='brand-photo'>{img}<figcaption>{esc(caption)}</figcaption></figure>")
    columns = min(len(figures), 8)
    note = "Training photos; the background outside each product mask is dimmed. " + results.brand_photos_note
    return (
        f"{head}<p class='sub'>{esc(note)}.</p><div class='card'><div class='shots' "
        f"style='grid-template-columns:repeat({columns}, minmax(0, 1fr))'>{''.join(figures)}</div></div>"
    )


def _fidelity_note(results: EvalResults) -> str:
    """One line on the model-based metrics (which models, what the images were compared with), when computed."""
    info = results.subject_fidelity
    return f"<p class='sub'>{esc(info.note)}</p>" if info is not None else ""


def _side_by_side(results: EvalResults, embed: Callable[[str], str | None]) -> str:
    """The HTML (CSS grid) of every prompt: one column per model, its images by seed (the images stay separate)."""
    cols = len(results.models)
    size = max(results.sampler.width, results.sampler.height)
    seed_order = {s: i for i, s in enumerate(results.seeds)}
    aspect_order = {a: i for i, a in enumerate(results.sampler.sizes)}
    per_row = min(len(results.seeds), 4 if cols <= 2 else 3)
    parts = []
    for index, prompt in enumerate(results.prompts):
        cells = []
        for model in results.models:
            rows = [r for r in results.per_image if r.model == model.key and r.prompt_index == index]
            rows.sort(key=lambda r: (aspect_order.get(r.aspect, 0), seed_order.get(r.seed, len(seed_order))))
            shots = (
                "".join(_figure(r, embed(r.image), size) for r in rows) or "<span class='ci'>no images</span>"
            )
            cells.append(
                f"<div class='cell'><h3>{esc(model.label)}</h3><div class='shots' style='grid-template-columns:repeat({per_row}, minmax(0, 1fr))'>{shots}</div></div>"
            )
        parts.append(
            f"<p class='prompt'><span>Prompt {index + 1}:</span> {esc(prompt)}</p>"
            f"<div class='grid' style='grid-template-columns:repeat({cols}, minmax(0, 1fr))'>{''.join(cells)}</div>"
        )
    return (
        "<div class='card'>"
        + "<hr style='border:0;border-top:1px solid #e3e7ee;margin:16px 0'>".join(parts)
        + "</div>"
    )


def render(
    results: EvalResults,
    embed: Callable[[str], str | None],
    directions: Mapping[str, str],
    descriptions: Mapping[str, str],
) -> str:
    """The whole page. ``embed`` maps an image's relative path to a data URI (None when it cannot be read)."""
    name = results.brand_display_name or results.brand
    when = results.created_at.strftime("%Y-%m-%d %H:%M %Z").strip()
    body = (
        f"<h1>{esc(name)} — model evaluation</h1>"
        f"<p class='sub'>{esc(when)} · {esc(', '.join(m.label for m in results.models))}</p>"
        f"{_decision(results.gate)}"
        f"{_brand_photos(results, embed)}"
        f"<h2>Side by side</h2><p class='sub'>Same prompt and seed in every column; hover an image for its "
        f"metrics.</p>{_side_by_side(results, embed)}"
        f"<h2>Metrics</h2><p class='sub'>Mean over all images with a 95% bootstrap confidence interval; the best "
        f"model per metric is highlighted.</p>{_fidelity_note(results)}"
        f"{_metric_table(results, directions, descriptions)}"
        f"<h2>Setup</h2>{_overview(results)}"
        f"<footer>brandtune evaluation report for brand “{esc(results.brand)}”. Self-contained: images are "
        f"embedded.</footer>"
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{esc(name)} — evaluation</title><style>{CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def write_report(results: EvalResults, out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.json`` and a self-contained ``report.html`` into ``out_dir`` (atomically each).

    Image paths in ``results.per_image`` are relative to ``out_dir``; aggregates are computed from the rows when
    ``results.aggregates`` is empty.

    Returns:
        ``(json_path, html_path)``.

    Raises:
        EvaluationError: ``out_dir`` exists and is not a folder.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise EvaluationError(f"report folder {out_dir} is a file; give a folder path")
    if not results.aggregates and results.per_image:
        stats = aggregate(results.per_image)
        results = results.model_copy(
            update={
                "aggregates": {
                    m: {k: MetricStats(**v) for k, v in metrics.items()} for m, metrics in stats.items()
                }
            }
        )
    json_path, html_path = out_dir / "report.json", out_dir / "report.html"
    atomic_write_json(json_path, _json_ready(results.model_dump(mode="json")))
    atomic_write_text(html_path, render_html(results, out_dir))
    logger.info("wrote evaluation report %s", html_path)
    return json_path, html_path


def _json_ready(data: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: _json_ready(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_json_ready(v) for v in data]
    return data


def _data_uri(path: Path) -> str | None:
    """The image as a base64 PNG data URI (downscaled past THUMB_MAX), or None if it cannot be read."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if max(img.size) > THUMB_MAX:
                img.thumbnail((THUMB_MAX, THUMB_MAX), Image.LANCZOS)
            buf = io.BytesIO()
            img.save(buf, format="PNG", optimize=True)
    except (OSError, ValueError) as exc:
        logger.warning("report: cannot embed image %s (%s); showing a placeholder", path, exc)
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def render_html(results: EvalResults, out_dir: Path) -> str:
    """The report as one HTML page, its images read from ``out_dir`` and embedded."""
    return render(results, lambda rel: _data_uri(Path(out_dir) / rel), METRIC_DIRECTIONS, METRIC_DESCRIPTIONS)
