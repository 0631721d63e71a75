"""Every job config of brandtune, in one place: the brand spec and each stage's config (pydantic, strict).

Every model forbids unknown keys (a typo is an error, not a silently ignored knob) and describes each field, which
is what the Prefect UI and ``brandtune --help`` show. Overrides follow one path: defaults, then a YAML file, then
command-line flags (see :func:`job_config`). The flows' parameter models are derived from these
(:func:`derive_model`), so each knob's type, bounds, default and description are written once.

This package is the bottom layer: it imports nothing of brandtune but :mod:`brandtune.errors` and
:mod:`brandtune.settings`, and nothing heavy.

| module | holds |
| --- | --- |
| ``_base`` | ``StrictModel``, ``HexColour``, ``SLUG_PATTERN``, ``job_config``, ``load_yaml_model``, ``derive_model`` |
| ``brand`` | ``BrandSpec`` (brand.yaml), ``BrandGate``, ``load_brand``, ``brand_dir`` |
| ``ingest`` | ``IngestConfig`` |
| ``train`` | ``TrainConfig``, ``TrainingDefaults`` (a base's recommendation), LoRA target lists |
| ``evaluate`` | ``EvalConfig``, ``GateConfig``, ``GateRule``, ``default_rules``, ``METRIC_DIRECTIONS``, ``check_model_folder`` |
| ``generate`` | ``GenerateConfig`` |
| ``sampler`` | ``SamplerConfig`` (generation and evaluation) |
| ``device`` | the ``device`` / ``dtype`` fields of generation and evaluation, ``resolve_placement``, ``Placement`` |
| ``pretrain`` | ``PretrainConfig`` (builtin:tiny from scratch) |
"""

from brandtune.config._base import (
    HEX_RE,
    SLUG_PATTERN,
    SLUG_RE,
    HexColour,
    StrictModel,
    derive_model,
    field_type,
    format_validation_error,
    job_config,
    load_yaml_model,
    read_yaml_mapping,
)
from brandtune.config.brand import (
    DEFAULT_BRANDS_DIR,
    BrandGate,
    BrandSpec,
    brand_dir,
    brands_root,
    ensure_trigger,
    load_brand,
)
from brandtune.config.device import DeviceName, DtypeName, Placement, resolve_placement
from brandtune.config.evaluate import (
    METRIC_DIRECTIONS,
    Comparison,
    Direction,
    EvalConfig,
    GateConfig,
    GateRule,
    Reference,
    check_model_folder,
    default_rules,
)
from brandtune.config.generate import GenerateConfig
from brandtune.config.ingest import IngestConfig
from brandtune.config.pretrain import PretrainConfig
from brandtune.config.sampler import SamplerConfig, SchedulerName
from brandtune.config.train import (
    ATTENTION_UNET_TARGETS,
    BASE_RECOMMENDED,
    DEFAULT_TEXT_TARGETS,
    DEFAULT_UNET_TARGETS,
    NON_ATTENTION_UNET_TARGETS,
    LrScheduler,
    TrainConfig,
    TrainingDefaults,
)
from brandtune.errors import ConfigError
from brandtune.settings import Settings

__all__ = [
    "ATTENTION_UNET_TARGETS",
    "BASE_RECOMMENDED",
    "DEFAULT_BRANDS_DIR",
    "DEFAULT_TEXT_TARGETS",
    "DEFAULT_UNET_TARGETS",
    "HEX_RE",
    "METRIC_DIRECTIONS",
    "NON_ATTENTION_UNET_TARGETS",
    "SLUG_PATTERN",
    "SLUG_RE",
    "BrandGate",
    "BrandSpec",
    "Comparison",
    "ConfigError",
    "DeviceName",
    "Direction",
    "DtypeName",
    "EvalConfig",
    "GateConfig",
    "GateRule",
    "GenerateConfig",
    "HexColour",
    "IngestConfig",
    "LrScheduler",
    "Placement",
    "PretrainConfig",
    "Reference",
    "SamplerConfig",
    "SchedulerName",
    "Settings",
    "StrictModel",
    "TrainConfig",
    "TrainingDefaults",
    "brand_dir",
    "brands_root",
    "check_model_folder",
    "default_rules",
    "derive_model",
    "ensure_trigger",
    "field_type",
    "format_validation_error",
    "job_config",
    "load_brand",
    "load_yaml_model",
    "read_yaml_mapping",
    "resolve_placement",
]
