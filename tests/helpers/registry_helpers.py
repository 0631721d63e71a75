"""Shared helpers of the registry tests: a trained adapter, runs made from it, deterministic images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from threads import THREADS

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMPT = "a photo of acme bottle on a beach"


def train_acme(out: Path) -> Any:
    """Ingest the sample brand and train a short, visibly different adapter (lr 1e-2) into ``out``."""
    from brandtune.config import load_brand
    from brandtune.ingest import ingest
    from brandtune.training import TrainConfig
    from brandtune.training.run import train

    brand = load_brand(REPO_ROOT / "data" / "brands" / "acme")
    ingest(brand, REPO_ROOT / "data" / "brands" / "acme" / "photos", progress=False)
    cfg = TrainConfig(
        brand="acme",
        max_train_steps=10,
        checkpointing_steps=0,
        validation_inference_steps=2,
        learning_rate=1e-2,
        lr_warmup_steps=0,
        num_threads=THREADS,
        output_dir=out,
    )
    return train(cfg)


def clone_run(tracking_uri: str, adapter_dir: Path, tmp: Path, **provenance: Any) -> str:
    """A new run of experiment brandtune/acme whose adapter/ is ``adapter_dir`` with edited brandtune.json."""
    import mlflow

    from brandtune.tracking import experiment_for

    folder = tmp / "adapter"
    shutil.copytree(adapter_dir, folder)
    info = json.loads((folder / "brandtune.json").read_text())
    info.update(provenance)
    (folder / "brandtune.json").write_text(json.dumps(info))
    client = mlflow.MlflowClient(tracking_uri)
    run = client.create_run(experiment_for("acme", tracking_uri), tags={"brandtune.brand": "acme"})
    client.log_artifacts(run.info.run_id, str(folder), "adapter")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def generate(pipe: Any, seed: int = 0) -> np.ndarray:
    import torch

    out = pipe(PROMPT, num_inference_steps=3, generator=torch.Generator().manual_seed(seed), output_type="np")
    return out.images[0]


def reference_pipeline(adapter_dir: Path) -> Any:
    """The in-memory way: base + load_lora_weights of the run's adapter folder."""
    from brandtune.models import load_base_pipeline, resolve_base

    pipe = load_base_pipeline(resolve_base("builtin:tiny"))
    pipe.load_lora_weights(str(adapter_dir))
    return pipe
