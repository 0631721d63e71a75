"""Behavioural tests of the shipped, pretrained builtin:tiny: it is what builtin:tiny resolves to, it follows the
colour named in a caption, a brand LoRA trained on it with the demo's settings learns the brand's palette while
the settings stay what the prompts ask for, and the evaluation job's default gate releases that LoRA as the first
champion (it beats the base model) while it refuses an adapter trained for one step.

These run the real model on fixed prompts and seeds. The thresholds were set from measurements of the shipped
weights (docs/builtin-tiny.md) with a margin; they check behaviour, not exact pixels.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from brandtune.evaluation.imageprep import as_rgb_array
from brandtune.evaluation.metrics import palette_adherence
from brandtune.models import load_base_pipeline, resolve_base
from brandtune.models.builtin import builtin_spec, shipped_dir
from brandtune.sampling import sample_images
from brandtune.synthetic import COLOURS

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

#: Colours asked for in the caption-following test (chance level: 1 / len).
ASKED_COLOURS = ("red", "blue", "green", "yellow")
COLOUR_SEEDS = range(8)
#: Measured on the shipped weights: see docs/builtin-tiny.md.
MIN_COLOUR_ACCURACY = 0.75
#: Seeds per evaluation prompt in the brand fine-tune test.
BRAND_SEEDS = range(4)
#: The adapter's mean CIEDE2000 to the brand palette over the base's. Measured with the demo's settings over
#: training seeds 0, 1, 2: 0.77, 0.78, 0.84 (docs/builtin-tiny.md); so "down by at least 15%".
MAX_PALETTE_RATIO = 0.85
#: Share of the adapter's beach and snow images whose background is nearer the base's for the same prompt (7/8
#: measured).
MIN_SETTING_RIGHT = 0.75
#: The adapter's beach-vs-snow background distance must keep at least this share of the base's.
MIN_SETTING_CONTRAST = 0.5


@pytest.fixture(scope="module")
def base_pipe() -> Any:
    if shipped_dir(builtin_spec("builtin:tiny")) is None:
        pytest.fail(
            "brandtune/assets/builtin_tiny/ is missing: the pretrained weights must ship with the package"
        )
    return load_base_pipeline(resolve_base("builtin:tiny"))


def classify_colour(image: Any, names: Sequence[str]) -> str:
    """The named colour that the most saturated pixels of ``image`` are nearest to (CIEDE2000)."""
    from skimage.color import deltaE_ciede2000, rgb2lab

    lab = rgb2lab(as_rgb_array(image)).reshape(-1, 3)
    chroma = np.hypot(lab[:, 1], lab[:, 2])
    lab = lab[chroma > 25] if (chroma > 25).sum() >= 8 else lab
    refs = rgb2lab(np.array([[COLOURS[n] for n in names]], dtype=np.float64) / 255.0)[0]  # (K, 3)
    dist = np.stack([deltaE_ciede2000(lab, np.broadcast_to(ref, lab.shape)) for ref in refs], axis=1)
    votes = np.bincount(dist.argmin(axis=1), minlength=len(names))
    return names[int(votes.argmax())]


def test_base_follows_colour_in_captions(base_pipe: Any) -> None:
    prompts = [f"a photo of a {c} mug in a studio" for c in ASKED_COLOURS for _ in COLOUR_SEEDS]
    seeds = [s for _ in ASKED_COLOURS for s in COLOUR_SEEDS]
    images = sample_images(base_pipe, prompts, seeds)
    asked = [c for c in ASKED_COLOURS for _ in COLOUR_SEEDS]
    got = [classify_colour(img, ASKED_COLOURS) for img in images]
    accuracy = float(np.mean([a == g for a, g in zip(asked, got, strict=True)]))
    print(f"colour accuracy {accuracy:.2f} (chance {1 / len(ASKED_COLOURS):.2f}); got {got}")
    assert accuracy >= MIN_COLOUR_ACCURACY, f"colour accuracy {accuracy:.2f} < {MIN_COLOUR_ACCURACY}"


def test_shipped_builtin_tiny_is_what_builtin_tiny_resolves_to() -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    spec = builtin_spec("builtin:tiny")
    shipped = shipped_dir(spec)
    assert shipped is not None, "brandtune/assets/builtin_tiny/ (the pretrained weights) is missing"
    resolved = resolve_base("builtin:tiny")
    assert resolved.path == shipped
    assert (resolved.family, resolved.resolution, resolved.pipeline_class) == (
        "sd1",
        64,
        "StableDiffusionPipeline",
    )
    assert resolved.revision.startswith("sha256:")
    weights = list(shipped.rglob("*.safetensors"))
    assert len(weights) == 3 and not list(shipped.rglob("*.bin"))
    assert sum(p.stat().st_size for p in weights) <= 25 * 2**20
    assert (shipped / "README.md").is_file() and (shipped / "pretrain.json").is_file()
    # The shipped architecture is the spec's: the from-config build and the pretrained copy are the same model.
    unet_config = json.loads((shipped / "unet" / "config.json").read_text())
    assert {k: unet_config[k] for k in spec.config["unet"]} == spec.config["unet"]
    pipe = StableDiffusionPipeline.from_pretrained(shipped)  # plain diffusers loads it
    pipe.set_progress_bar_config(disable=True)
    assert pipe(
        "a red mug on a beach",
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    ).images[0].size == (64, 64)


def background_lab(image: Any, border: int = 6) -> np.ndarray:
    """Mean CIELAB of the image's outer ``border`` px: the setting, not the (centred) product."""
    from skimage.color import rgb2lab

    lab = rgb2lab(as_rgb_array(image))
    ring = np.ones(lab.shape[:2], dtype=bool)
    ring[border:-border, border:-border] = False
    return lab[ring].mean(axis=0)


def _ciede2000(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.color import deltaE_ciede2000

    return float(deltaE_ciede2000(a, b))


def _demo_train_config(out: Any, **overrides: Any) -> Any:
    """The demo's fine-tune (same steps, batch and learning rate) on the acme photos, writing to ``out``."""
    from brandtune.training import TrainConfig

    # steps, batch, LoRA targets, learning rate and schedule: builtin:tiny's recommendation, as in the demo
    fields = {"checkpointing_steps": 0, **overrides}  # checkpoints do not change the weights
    return TrainConfig(
        brand="acme", **fields, validation_inference_steps=2, num_threads=1, output_dir=out / "acme-lora"
    )


@pytest.fixture(scope="module")
def demo_adapter(one_torch_thread: None, acme_dataset: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The demo's fine-tune, trained once for this module (a TrainResult: adapter_dir, mlflow_run_id)."""
    from brandtune.training.run import train

    return train(_demo_train_config(tmp_path_factory.mktemp("demo-lora"), dataset=acme_dataset.name))


def test_brand_lora_learns_the_palette_and_keeps_the_settings(base_pipe: Any, demo_adapter: Any) -> None:
    """The demo's fine-tune on the acme photos, scored on the brand's evaluation prompts with fixed seeds, base vs
    adapter."""
    from brandtune.config import load_brand

    brand = load_brand("acme")
    prompts = [brand.fill(p) for p in brand.evaluation_prompts]  # beach, snow, kitchen counter, studio

    def draw() -> dict[str, list[Any]]:
        images = sample_images(
            base_pipe, [p for p in prompts for _ in BRAND_SEEDS], [*BRAND_SEEDS] * len(prompts)
        )
        n = len(BRAND_SEEDS)
        return {p: images[i * n : (i + 1) * n] for i, p in enumerate(prompts)}

    def palette_de(images: dict[str, list[Any]]) -> float:
        scores = [
            palette_adherence(im, brand.palette, brand.neutral_palette).delta_e
            for v in images.values()
            for im in v
        ]
        return float(np.mean(scores))

    before = draw()
    base_pipe.load_lora_weights(str(demo_adapter.adapter_dir))
    try:
        after = draw()
    finally:
        base_pipe.unload_lora_weights()

    de_before, de_after = palette_de(before), palette_de(after)
    # setting: each adapter image's background is nearer the base's beach backgrounds when the prompt says beach,
    # and the base's snow backgrounds when it says snow; and the two stay as far apart as the base draws them
    beach, snow = prompts[0], prompts[1]

    def centre(images: list[Any]) -> np.ndarray:
        return np.mean([background_lab(im) for im in images], axis=0)

    base_centres = {p: centre(before[p]) for p in (beach, snow)}
    right = [
        min((beach, snow), key=lambda q, im=im: _ciede2000(background_lab(im), base_centres[q])) == p
        for p in (beach, snow)
        for im in after[p]
    ]
    contrast_before = _ciede2000(base_centres[beach], base_centres[snow])
    contrast_after = _ciede2000(centre(after[beach]), centre(after[snow]))
    print(
        f"palette dE {de_before:.2f} -> {de_after:.2f} ({de_after / de_before:.2f}x); beach/snow backgrounds right "
        f"{sum(right)}/{len(right)}; beach-vs-snow background dE {contrast_before:.1f} -> {contrast_after:.1f}"
    )
    assert de_after <= MAX_PALETTE_RATIO * de_before, (
        f"palette dE {de_before:.2f} -> {de_after:.2f}: not down by {1 - MAX_PALETTE_RATIO:.0%}"
    )
    assert np.mean(right) >= MIN_SETTING_RIGHT, (
        f"only {sum(right)}/{len(right)} beach/snow images keep their setting"
    )
    assert contrast_after >= MIN_SETTING_CONTRAST * contrast_before, "beach and snow backgrounds converged"


def _paired_palette(outcome: Any) -> str:
    gate = {r.rule: r for r in outcome.gate.rules}["palette_delta_e improve_by vs base"]
    return (
        f"v{outcome.candidate_version}: palette dE base {gate.base:.2f} -> adapter {gate.candidate:.2f}, improvement "
        f"{gate.improvement:.2f} (95% CI {gate.ci_low:.2f} to {gate.ci_high:.2f}, {gate.pairs} pairs), "
        f"technical_ok {outcome.metrics['candidate']['technical_ok']:.2f} vs {outcome.metrics['base']['technical_ok']:.2f}"
        f": {outcome.gate.summary()}"
    )


def test_default_gate_releases_the_demo_adapter_and_refuses_a_one_step_one(
    demo_adapter: Any, acme_dataset: Any, tmp_path: Any
) -> None:
    """The real evaluation job with the default gate and no champion yet, as in ``make demo``: the demo's
    fine-tune becomes the first champion because it beats the base model on the same prompts and seeds; an adapter
    trained for one step (barely changed from the base) is refused, and the report says which rule and why."""
    from brandtune.config import EvalConfig
    from brandtune.evaluation.job import evaluate
    from brandtune.registry import list_versions, register
    from brandtune.training.run import train

    weak_run = train(
        _demo_train_config(tmp_path / "weak", dataset=acme_dataset.name, max_train_steps=1, lr_warmup_steps=0)
    )
    weak = register("acme", weak_run.mlflow_run_id).version
    refused = evaluate(EvalConfig(brand="acme", candidate=weak, output_dir=tmp_path / "weak-eval"))
    print(f"one-step adapter {_paired_palette(refused)}")
    assert not refused.gate.passed and not refused.promoted and refused.champion_version is None
    assert [r.rule for r in refused.gate.failed] == ["palette_delta_e improve_by vs base"]
    assert "palette_delta_e improve_by vs base" in refused.gate.summary()
    assert "not reliably better than the base model" in refused.gate.failed[0].explanation

    good = register("acme", demo_adapter.mlflow_run_id).version
    released = evaluate(EvalConfig(brand="acme", candidate=good, output_dir=tmp_path / "demo-eval"))
    print(f"demo adapter {_paired_palette(released)}")
    assert released.gate.passed, released.gate.summary()
    assert released.promoted and released.champion_version is None  # the first champion
    versions = {v.version: v for v in list_versions("acme")}
    assert "champion" in versions[good].aliases and "champion" not in versions[weak].aliases
    assert "closer to the ACME Drinks palette" in versions[good].tags["brandtune.gate_explanation"]
    assert "not reliably better" in versions[weak].tags["brandtune.gate_explanation"]
    page = released.report_html.read_text()
    assert "closer to the ACME Drinks palette than the base model" in page
