"""Make the figures of docs/builtin-tiny.md: pretraining curves, base samples, acme before/after.

Usage:
    python scripts/builtin_tiny_figures.py curves --run-id RUN --tracking-uri sqlite:///.../mlflow.db
    python scripts/builtin_tiny_figures.py samples
    python scripts/builtin_tiny_figures.py before-after --adapter RUN_DIR/adapter

Writes PNGs under docs/img/. Seeds and prompts are fixed, so the figures are reproducible on the same machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "docs" / "img"
SAMPLE_PROMPTS = [
    "a red mug on a beach",
    "a blue bottle in the snow",
    "a yellow box on a kitchen counter",
    "a green can in a forest",
    "a purple jar in a studio",
    "an orange tube on a city street at night",
]
SEEDS = [0, 1, 2, 3]


def curves(run_id: str, tracking_uri: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    panels = [
        ("vae/l1", "VAE L1 (train crops)"),
        ("vae/psnr_db", "VAE PSNR dB (held out)"),
        ("unet/loss", "UNet loss (v-prediction)"),
        ("decoder/l1", "decoder L1 (stage 4)"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.2))
    for ax, (key, title) in zip(axes, panels, strict=True):
        hist = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        ax.plot([m.step for m in hist], [m.value for m in hist], lw=1)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(OUT / "builtin-tiny-curves.png", dpi=100)
    print("wrote", OUT / "builtin-tiny-curves.png")  # noqa: T201


def _pipe() -> object:
    import torch

    from brandtune.models import load_base_pipeline, resolve_base

    torch.set_num_threads(1)
    return load_base_pipeline(resolve_base("builtin:tiny"))


def samples() -> None:
    from brandtune.images import image_grid
    from brandtune.sampling import sample_images

    pipe = _pipe()
    prompts = [p for p in SAMPLE_PROMPTS for _ in SEEDS]
    images = sample_images(pipe, prompts, [s for _ in SAMPLE_PROMPTS for s in SEEDS])
    image_grid(images, columns=len(SEEDS), thumb=96).save(OUT / "builtin-tiny-samples.png")
    print("wrote", OUT / "builtin-tiny-samples.png", "rows:", SAMPLE_PROMPTS)  # noqa: T201


def before_after(adapter: Path) -> None:
    from brandtune.config import load_brand
    from brandtune.images import image_grid
    from brandtune.sampling import sample_images

    brand = load_brand("acme")
    prompts = [brand.fill(p) for p in brand.evaluation_prompts]
    pipe = _pipe()
    all_prompts = [p for p in prompts for _ in SEEDS]
    all_seeds = [s for _ in prompts for s in SEEDS]
    before = image_grid(sample_images(pipe, all_prompts, all_seeds), columns=len(SEEDS), thumb=96)
    pipe.load_lora_weights(str(adapter))
    after = image_grid(sample_images(pipe, all_prompts, all_seeds), columns=len(SEEDS), thumb=96)
    sheet = image_grid([before, after], columns=2, thumb=None, gap=16)
    sheet.save(OUT / "builtin-tiny-acme-before-after.png")
    print("wrote", OUT / "builtin-tiny-acme-before-after.png", "rows:", prompts)  # noqa: T201


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["curves", "samples", "before-after"])
    parser.add_argument("--run-id")
    parser.add_argument("--tracking-uri")
    parser.add_argument("--adapter", type=Path)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.what == "curves":
        curves(args.run_id, args.tracking_uri)
    elif args.what == "samples":
        samples()
    else:
        before_after(args.adapter)


if __name__ == "__main__":
    main()
