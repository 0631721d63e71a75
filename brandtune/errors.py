"""The error hierarchy.

Every error brandtune raises on purpose derives from :class:`BrandtuneError`, and each stage's error also
inherits the matching built-in, so ``except ValueError`` keeps working for callers that do not know brandtune.
A message names the input, what is wrong with it and what to do about it.
"""

from __future__ import annotations


class BrandtuneError(Exception):
    """Base class of all errors raised by brandtune."""


class ConfigError(BrandtuneError, ValueError):
    """A brand spec, job config or setting is invalid."""


class IngestError(BrandtuneError, ValueError):
    """Photos could not be turned into a dataset."""


class ModelResolutionError(BrandtuneError, ValueError):
    """A base model reference cannot be resolved to a usable diffusers model."""


class UnsupportedModelError(ModelResolutionError):
    """The base model resolved, but its family is not one brandtune can train."""


class TrainingError(BrandtuneError, RuntimeError):
    """Training could not start or stopped with a failure."""


class RegistryError(BrandtuneError, RuntimeError):
    """The MLflow tracking server or model registry refused or could not serve a request."""


class EvaluationError(BrandtuneError, RuntimeError):
    """An evaluation job could not run."""


class GenerationError(BrandtuneError, ValueError):
    """A generation job is invalid or could not run."""
