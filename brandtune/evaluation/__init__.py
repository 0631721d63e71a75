"""Evaluation: weight-free and model-based metrics, the promotion gate and the HTML/JSON report.

The pure parts live here and import nothing heavy at module level:

- :mod:`brandtune.evaluation.metrics`: per-image and per-set metrics on PIL images / numpy arrays
  (palette adherence, colour distribution, similarity to references, diversity, technical checks).
- :mod:`brandtune.evaluation.model_metrics`: CLIP-T, CLIP-I, DINO, FID/KID from local weights only (imports torch
  and transformers inside functions).
- :mod:`brandtune.evaluation.gate`: the promotion gate as pure logic on metric dictionaries.
- :mod:`brandtune.evaluation.report`: bootstrap confidence intervals, aggregation and the report writer.
"""
