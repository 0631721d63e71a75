"""The evaluation job: candidate vs champion and the base model, the gate, and the release.

Every model compared samples the brand's fixed prompts x fixed seeds with identical sampler settings. Images are
scored with the weight-free metrics (and, when the config names local CLIP/DINOv2 folders, with clip_t, clip_i and
dino against the product regions of the brand photos: :mod:`brandtune.evaluation.subject_fidelity`), aggregated with bootstrap confidence intervals, written as report.json and
report.html, logged to an MLflow evaluation run, and recorded as ``brandtune.metric.*`` tags on the candidate
version. The gate sees the per-model means and the per-image rows (its first-champion rule pairs the candidate's
images with the base model's by prompt and seed). The run is logged and the version tagged first; then, when the
gate passed, ``@champion`` moves to the candidate, provided it still is the champion the candidate was judged
against (a champion that moved meanwhile is reported in ``EvalOutcome.promotion_note``, nothing moves); when the
gate fails, nothing moves and the reason is recorded on the version.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brandtune.config import BrandSpec, EvalConfig, SamplerConfig, load_brand, resolve_placement
from brandtune.errors import EvaluationError
from brandtune.evaluation.gate import GateResult, evaluate_gate
from brandtune.settings import Settings

if TYPE_CHECKING:
    from brandtune.evaluation.brand_photos import BrandPhoto
    from brandtune.evaluation.report import EvalResults
    from brandtune.evaluation.subject_fidelity import SubjectFidelity
    from brandtune.registry import FetchedAdapter

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalOutcome:
    report_json: Path
    report_html: Path
    gate: GateResult
    promoted: bool
    candidate_version: str
    champion_version: str | None
    mlflow_run_id: str
    metrics: dict[str, dict[str, float]]  # model key -> metric -> mean
    timings: dict[str, float] = field(default_factory=dict)  # generate_s, score_s, total_s
    promotion_note: str | None = None  # why a passing candidate was not promoted (the champion moved)


@dataclass
class _Model:
    key: str
    label: str
    adapter: FetchedAdapter | None  # None: the base model without adapter


def _alias_exists(brand: str, alias: str, settings: Settings) -> bool:
    from brandtune.registry import list_versions

    return any(alias in v.aliases for v in list_versions(brand, settings=settings))


def _models(cfg: EvalConfig, settings: Settings) -> tuple[list[_Model], str | None]:
    """The models to compare, and the version ``cfg.against`` resolved to (None: none), which a promotion
    carries as the champion it was judged against."""
    from brandtune.registry import fetch, model_uri

    cand = fetch(model_uri(cfg.brand, cfg.candidate), settings=settings)
    models = [_Model("candidate", f"Candidate v{cand.version.version}", cand)]
    against, seen = cfg.against, None
    if against and (against.isdigit() or _alias_exists(cfg.brand, against.lstrip("@"), settings)):
        champ = fetch(model_uri(cfg.brand, against), settings=settings)
        seen = champ.version.version
        if champ.version.version != cand.version.version:
            models.append(_Model("champion", f"{against.title()} v{champ.version.version}", champ))
    elif against:
        logger.info("%s has no @%s yet: the candidate is judged as a first champion", cfg.brand, against)
    if cfg.include_base:
        models.append(_Model("base", "Base model", None))
    return models, seen


#: How many of the training photos the report shows.
REPORT_PHOTOS = 8


def _brand_photos(
    brand: BrandSpec, fingerprint: str | None, out: Path, settings: Settings
) -> tuple[list[BrandPhoto], list[Any], str]:
    """The training photos of the candidate's dataset (else the brand's latest): every photo (with its mask) as a
    reference for the metrics, a few written with their masks overlaid under ``<out>/brand_photos/`` for the report, and a
    one-line note on where they come from."""
    from brandtune.evaluation.brand_photos import load_brand_photos, locate_dataset, overlay
    from brandtune.evaluation.report import BrandPhotoRow
    from brandtune.images import save_png

    folder, note = locate_dataset(brand.name, fingerprint or None, settings)
    if folder is None:
        logger.warning("%s reference metrics are skipped", note)
        return [], [], note
    photos = load_brand_photos(folder)
    shown = []
    for photo in photos[:REPORT_PHOTOS]:
        rel = f"brand_photos/{photo.name}"
        save_png(overlay(photo), out / rel)
        shown.append(
            BrandPhotoRow(image=rel, source=photo.name, mask=photo.mask is not None, coverage=photo.coverage)
        )
    masked = sum(p.mask is not None for p in photos)
    note = f"{len(shown)} of {len(photos)} photos ({masked} with a mask), {note}"
    return photos, shown, note


Made = dict[str, list[tuple[int, int, str | None, str]]]  # model key -> [(prompt index, seed, aspect, path)]


def _generate_all(
    cfg: EvalConfig,
    models: list[_Model],
    prompts: list[str],
    aspects: list[str],
    out: Path,
    settings: Settings,
) -> tuple[Made, SamplerConfig, dict[str, list[int]]]:
    """Sample every (model, aspect, prompt, seed) on ``cfg.device`` in ``cfg.dtype`` (resolved by the caller);
    returns model key -> [(prompt index, seed, aspect or None, relative path)], the sampler settings used (every
    empty one filled for the base, the first aspect's size) and, with several aspects, aspect -> [width, height]."""
    import torch
    from tqdm.auto import tqdm

    from brandtune.images import save_png
    from brandtune.models import load_base_pipeline
    from brandtune.models.loading import load_adapter
    from brandtune.registry import WEIGHTS_NAME, adapter_name, resolve_adapter_base
    from brandtune.sampling import (
        apply_scheduler,
        aspect_samplers,
        resolve_sampler,
        sample_batch,
        use_sequence_length,
    )

    cand = models[0].adapter
    assert cand is not None
    jobs = [(pi, seed) for pi in range(len(prompts)) for seed in cfg.seeds]
    bar = tqdm(total=len(jobs) * len(models) * len(aspects), desc="evaluate: generate", unit="img")
    pipes: dict[tuple[str, str], Any] = {}
    samplers: dict[tuple[str, str], list[tuple[str | None, SamplerConfig]]] = {}  # per base: its sizes
    made: Made = {}
    for model in models:
        adapter = model.adapter or cand
        base = (adapter.base_model, adapter.base_revision)
        if base not in pipes:
            pipes[base] = load_base_pipeline(
                resolve_adapter_base(adapter, None, settings),
                torch_dtype=getattr(torch, cfg.dtype),
                device=cfg.device,
            )
            apply_scheduler(pipes[base], cfg.sampler)
            samplers[base] = [
                (a, resolve_sampler(s, pipes[base]))
                for a, s in aspect_samplers(pipes[base], cfg.sampler, aspects)
            ]
        pipe, shaped = pipes[base], samplers[base]
        if model.adapter is not None:
            name = adapter_name(model.adapter.version)
            load_adapter(pipe, model.adapter.path, weight_name=WEIGHTS_NAME, adapter_name=name)
            pipe.set_adapters([name])
        rows = []
        for aspect, sampler in shaped:
            # one aspect: rows and file names as before aspects existed
            label = aspect if len(shaped) > 1 else None
            tail = f"_{label.replace(':', 'x')}" if label else ""
            for start in range(0, len(jobs), cfg.batch_size):
                chunk = jobs[start : start + cfg.batch_size]
                images = sample_batch(pipe, [prompts[pi] for pi, _ in chunk], [s for _, s in chunk], sampler)
                for (pi, seed), image in zip(chunk, images, strict=True):
                    rel = f"images/{model.key}/p{pi}_s{seed}{tail}.png"
                    save_png(image, out / rel)
                    rows.append((pi, seed, label, rel))
                bar.update(len(chunk))
        if model.adapter is not None:
            pipe.unload_lora_weights()
            use_sequence_length(pipe, None)
        made[model.key] = rows
    bar.close()
    shaped = samplers[(cand.base_model, cand.base_revision)]  # what the report names: the candidate's
    sizes = {a: [s.width, s.height] for a, s in shaped if a} if len(shaped) > 1 else {}
    return made, shaped[0][1], sizes


def _score(
    brand: BrandSpec,
    made: Made,
    out: Path,
    photos: list[BrandPhoto],
    prompts: list[str],
    fidelity: SubjectFidelity | None,
) -> tuple[list[Any], dict[str, dict[str, float]]]:
    """Every image's metrics (weight-free, plus the model-based ones when ``fidelity`` is given) and each model's
    set-level metrics. The weight-free references are the whole photos; the model-based ones their product
    regions (:meth:`SubjectFidelity.set_references`)."""
    from PIL import Image

    from brandtune.evaluation.metrics import ReferenceSet, score_image, score_set
    from brandtune.evaluation.report import ImageRow

    refs = ReferenceSet.from_images([p.image for p in photos]) if photos else None
    if fidelity is not None:
        fidelity.set_references(photos)
    rows, set_metrics = [], {}
    for key, items in made.items():
        images = []
        for _pi, _seed, _aspect, rel in items:
            with Image.open(out / rel) as img:
                images.append(img.convert("RGB"))
        scored = [
            score_image(image, palette=brand.palette, neutral_palette=brand.neutral_palette, references=refs)
            for image in images
        ]
        if fidelity is not None:
            extra = fidelity.score(images, [prompts[pi] for pi, *_ in items])
            scored = [{**metrics, **more} for metrics, more in zip(scored, extra, strict=True)]
        for (pi, seed, aspect, rel), metrics in zip(items, scored, strict=True):
            rows.append(
                ImageRow(model=key, prompt_index=pi, seed=seed, image=rel, metrics=metrics, aspect=aspect)
            )
        if len(images) >= 2:
            set_metrics[key] = score_set(images)
    return rows, set_metrics


def _means(results: EvalResults, key: str) -> dict[str, float]:
    out = {m: s.mean for m, s in results.aggregates.get(key, {}).items()}
    out.update(results.set_metrics.get(key, {}))
    return out


def evaluate(config: EvalConfig, settings: Settings | None = None) -> EvalOutcome:
    """Run the evaluation suite, write the report, apply the gate and (when it passes) promote.

    Raises:
        ConfigError: ``device: cuda`` where no CUDA GPU is visible (before anything is loaded or written).
        RegistryError: unknown candidate/alias or unreachable tracking server.
        EvaluationError: the brand has no evaluation prompts that can run.
        ConfigError: ``clip_model`` / ``dino_model`` does not load (checked before anything is sampled).
    """
    from brandtune.evaluation.report_html import write_report
    from brandtune.evaluation.subject_fidelity import SubjectFidelity

    t0 = time.perf_counter()
    placement = resolve_placement(config.device, config.dtype)  # before anything is loaded or written
    # the report and the MLflow run record what was used
    config = config.model_copy(update={"device": placement.device, "dtype": placement.dtype})
    settings = settings or Settings.from_env()
    brand = load_brand(config.brand)
    prompts = [brand.ensure_trigger(p)[0] for p in brand.evaluation_prompts]
    if not prompts:
        raise EvaluationError(f"brand {brand.name} has no evaluation_prompts in brand.yaml")
    fidelity = SubjectFidelity.load(config, placement.device)  # loaded once, before minutes of sampling
    logger.info("evaluating on %s", placement)
    models, seen_champion = _models(config, settings)
    cand = models[0].adapter
    assert cand is not None
    out = _output_dir(config, brand, cand, settings)
    made, sampler, sizes = _generate_all(config, models, prompts, config.aspects_for(brand), out, settings)
    config = config.model_copy(update={"sampler": sampler})  # what was used, every empty setting filled
    t1 = time.perf_counter()
    photos, shown, note = _brand_photos(brand, cand.provenance.get("dataset_fingerprint"), out, settings)
    rows, set_metrics = _score(brand, made, out, photos, prompts, fidelity)
    t2 = time.perf_counter()
    results = _results(config, brand, models, prompts, rows, set_metrics, sizes)
    results = results.model_copy(
        update={
            "brand_photos": shown,
            "brand_photos_note": note,
            "subject_fidelity": fidelity.info() if fidelity else None,
        }
    )
    champion = next((m for m in models if m.key == "champion"), None)
    gate = _judge(config, brand, results, models)
    results = results.model_copy(update={"gate": gate.to_dict()})
    report_json, report_html = write_report(results, out)
    metrics = {m.key: _means(results, m.key) for m in models}
    # recorded before anything moves: a crash after this point leaves an evaluated, tagged version
    run_id = _log_run(config, brand, models, metrics, gate, out, False, settings)
    _tag_candidate(brand, cand, metrics["candidate"], gate, run_id, settings)
    promoted, note = _release(config, brand, cand, seen_champion, gate, run_id, settings)
    timings = {"generate_s": t1 - t0, "score_s": t2 - t1, "total_s": time.perf_counter() - t0}
    logger.info("evaluation of v%s: %s (report %s)", cand.version.version, gate.summary(), report_html)
    return EvalOutcome(
        report_json,
        report_html,
        gate,
        promoted,
        cand.version.version,
        champion.adapter.version.version if champion and champion.adapter else None,
        run_id,
        metrics,
        timings,
        note,
    )


def _output_dir(cfg: EvalConfig, brand: BrandSpec, cand: FetchedAdapter, settings: Settings) -> Path:
    """The report folder (``cfg.output_dir``, or a timestamped one under the home), created."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = cfg.output_dir or settings.home / "evaluations" / brand.name / f"{stamp}-v{cand.version.version}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _results(
    cfg: EvalConfig,
    brand: BrandSpec,
    models: list[_Model],
    prompts: list[str],
    rows: list[Any],
    set_metrics: dict[str, dict[str, float]],
    sizes: dict[str, list[int]] | None = None,
) -> EvalResults:
    """The report's content before the gate: who was compared, how they were sampled, the scores and aggregates."""
    from brandtune.evaluation.report import EvalResults, MetricStats, ModelInfo, SamplerSettings, aggregate

    cand = models[0].adapter
    assert cand is not None
    results = EvalResults(
        brand=brand.name,
        brand_display_name=brand.display_name,
        models=[
            ModelInfo(
                key=m.key,
                label=m.label,
                uri=m.adapter.version.uri if m.adapter else None,
                version=m.adapter.version.version if m.adapter else None,
                base_model=(m.adapter or cand).base_model,
            )
            for m in models
        ],
        prompts=prompts,
        seeds=cfg.seeds,
        sampler=SamplerSettings(
            scheduler=cfg.sampler.scheduler,
            steps=cfg.sampler.num_inference_steps,
            guidance_scale=cfg.sampler.guidance_scale,
            width=cfg.sampler.width,
            height=cfg.sampler.height,
            negative_prompt=cfg.sampler.negative_prompt,
            sizes=sizes or {},
        ),
        per_image=rows,
        set_metrics=set_metrics,
    )
    stats = aggregate(results.per_image)
    return results.model_copy(
        update={"aggregates": {k: {m: MetricStats(**v) for m, v in ms.items()} for k, ms in stats.items()}}
    )


def _judge(cfg: EvalConfig, brand: BrandSpec, results: EvalResults, models: list[_Model]) -> GateResult:
    """Apply the brand's gate to the candidate's means, against the champion's and the base model's when compared."""
    keys = {m.key for m in models}
    return evaluate_gate(
        _means(results, "candidate"),
        _means(results, "champion") if "champion" in keys else None,
        cfg.gate_for(brand),
        base=_means(results, "base") if "base" in keys else None,
        per_image=results.per_image,
        brand=brand.display_name or brand.name,
    )


def _release(
    cfg: EvalConfig,
    brand: BrandSpec,
    cand: FetchedAdapter,
    expected_champion: str | None,
    gate: GateResult,
    run_id: str,
    settings: Settings,
) -> tuple[bool, str | None]:
    """Promote a passing candidate, as long as @champion still is the version it was judged against.

    Returns:
        Whether it was promoted, and why not when it passed but the champion had moved.
    """
    from brandtune.registry import CHAMPION, ChampionMovedError, promote, tag_lineage

    if not (gate.passed and cfg.promote) or cfg.against not in (None, CHAMPION, f"@{CHAMPION}"):
        return False, None
    try:
        promoted = bool(
            promote(
                brand.name,
                cand.version.version,
                expected_champion=expected_champion,
                reason="gate passed",
                settings=settings,
            )
        )
        note = None
    except ChampionMovedError as exc:
        logger.warning("%s", exc)
        promoted, note = False, str(exc)
    tags = {"brandtune.promoted": str(promoted).lower()}
    if note:
        tags["brandtune.promotion_refused"] = note[:4900]
    tag_lineage(tags, run_id=run_id, settings=settings)
    return promoted, note


def _tag_candidate(
    brand: BrandSpec,
    cand: FetchedAdapter,
    metrics: dict[str, float],
    gate: GateResult,
    run_id: str,
    settings: Settings,
) -> None:
    from brandtune.registry import set_version_tags

    tags = {f"brandtune.metric.{k}": f"{v:.6g}" for k, v in metrics.items()}
    tags.update(
        {
            "brandtune.gate": "pass" if gate.passed else "fail",
            "brandtune.gate_reason": gate.summary()[:4900],
            "brandtune.gate_explanation": " ".join(
                r.explanation for r in gate.rules if r.status != "skipped" and r.explanation
            )[:4900],
            "brandtune.eval_run_id": run_id,
        }
    )
    set_version_tags(brand.name, cand.version.version, tags, settings=settings)


def _log_run(
    cfg: EvalConfig,
    brand: BrandSpec,
    models: list[_Model],
    metrics: dict[str, dict[str, float]],
    gate: GateResult,
    out: Path,
    promoted: bool,
    settings: Settings,
) -> str:
    from brandtune.provenance import brandtune_version, flow_run_id, git_sha
    from brandtune.tracking import RunTracker, flat_params

    tracker = RunTracker.start(
        brand.name,
        settings.tracking_uri,
        None,
        f"evaluate-v{models[0].adapter.version.version}",
        flush_every=1000,
        system_metrics=False,
    )
    params = cfg.model_dump(mode="json", exclude={"gate", "output_dir", "sampler"})
    # the sampler's fields as params of their own (scheduler, num_inference_steps, ...), as before it was nested
    params.update(cfg.sampler.model_dump(mode="json", exclude_none=True))
    tracker.log_params(flat_params(params))
    tags = {
        "brandtune.stage": "evaluate",
        "brandtune.brand": brand.name,
        "brandtune.git_sha": git_sha(),
        "brandtune.version": brandtune_version(),
        "brandtune.gate": "pass" if gate.passed else "fail",
        "brandtune.promoted": str(promoted).lower(),
    }
    for m in models:
        if m.adapter is not None:
            tags[f"brandtune.{m.key}_version"] = m.adapter.version.version
    if flow_run := flow_run_id():
        tags["prefect.flow_run_id"] = flow_run
    tracker.set_tags(tags)
    flat = {f"{key}.{name}": value for key, ms in metrics.items() for name, value in ms.items()}
    tracker.log_metrics(flat, step=0)
    tracker.log_dict(gate.to_dict(), "gate.json")
    tracker.log_artifact(out)
    tracker.finish()
    return tracker.run_id
