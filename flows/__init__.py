"""Prefect flows for brandtune: thin shells that parse typed parameters, call ``brandtune`` and publish artifacts.

| flow | entrypoint | what it does |
| --- | --- | --- |
| ``ingest`` | ``flows/ingest.py:ingest_flow`` | photos -> versioned dataset |
| ``train`` | ``flows/train.py:train_flow`` | dataset -> LoRA adapter + MLflow run |
| ``evaluate`` | ``flows/evaluate.py:evaluate_flow`` | candidate vs champion (and base); the gate may promote |
| ``generate`` | ``flows/generate.py:generate_flow`` | campaign images from @champion |
| ``retrain`` | ``flows/retrain.py:retrain_flow`` | ingest -> train -> register -> evaluate -> promote |

Deployments live in ``prefect.yaml`` at the repository root.
"""
