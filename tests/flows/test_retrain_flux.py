"""The weekly pipeline on a FLUX.1 base: the retrain flow (ingest -> train -> register -> evaluate -> promote) and a
campaign from the champion, through the same flows and forms as the UNet families, on builtin:tiny-flux.

Real Prefect (the test harness), real MLflow on sqlite; training runs 2 steps, evaluation 1 seed and 2 steps at
64 px (the tiny model's training size; a FLUX pipeline's own default is 128 latent rows).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flow_helpers import LENIENT_GATE, TINY_EVAL, TINY_TRAINING, _aliases

pytestmark = pytest.mark.slow

FLUX = "builtin:tiny-flux"
SMALL = {"num_inference_steps": 2, "width": 64, "height": 64}


def test_retrain_and_campaign_on_a_flux_base(
    prefect_harness: None, mlflow_client: Any, torch_threads: None, tmp_path: Path
) -> None:
    from flows.generate import generate_flow
    from flows.retrain import retrain_flow

    state = retrain_flow(
        brand="acme",
        training={**TINY_TRAINING, "base_model": FLUX, "max_sequence_length": 32},
        evaluation={**TINY_EVAL, "sampler": SMALL, "gate": LENIENT_GATE},
        return_state=True,
    )
    assert state.is_completed(), state.message
    result = state.result()
    version = result["version"]
    assert result["passed"] and result["promoted"]
    assert _aliases(mlflow_client)["champion"] == version
    mv = mlflow_client.get_model_version("acme-lora", version)
    assert mv.tags["brandtune.base_model"] == FLUX and mv.tags["brandtune.base_family"] == "flux"
    params = mlflow_client.get_run(result["evaluation_run_id"]).data.params
    assert params["scheduler"] == "default" and params["guidance_scale"] == "3.5"  # FLUX.1-dev's defaults
    adapter = Path(mlflow_client.get_run(result["mlflow_run_id"]).data.tags["brandtune.adapter_dir"])
    assert json.loads((adapter / "brandtune.json").read_text())["max_sequence_length"] == 32

    out = tmp_path / "campaign"
    campaign = generate_flow(
        brand="acme",
        prompt="a photo of {trigger} {subject}",
        settings=["beach", "studio"],
        variations=1,
        generation={"sampler": SMALL, "batch_size": 2, "output_dir": str(out)},
    )
    assert campaign["generated"] == 2 and Path(campaign["gallery"]).is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["version"] == version
    assert manifest["sampler"]["num_inference_steps"] == 2 and manifest["sampler"]["guidance_scale"] == 3.5
    assert {img["size"] == [64, 64] for img in manifest["images"]} == {True}

    # what downstream generators pull: the FLUX pipeline with the champion loaded, and the plain files
    import brandtune
    from brandtune.registry import pull

    pipe = brandtune.load_pipeline("models:/acme-lora@champion")
    assert type(pipe).__name__ == "FluxPipeline" and pipe.get_active_adapters()
    pulled = json.loads((pull("acme", "champion", tmp_path / "pulled") / "adapter.json").read_text())
    assert pulled["base_family"] == "flux" and pulled["pipeline_class"] == "FluxPipeline"
