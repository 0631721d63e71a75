"""The flows' parameters cannot drift from the library configs: same type, bounds, default and description.

Every field of every flow parameter model (and of the models nested in it) that has a namesake in the library
config the flow converts it to must be that field; a field the library does not have is a flow-only knob and must
be in :data:`FLOW_ONLY` with the reason. The flows' own scalar parameters (a Prefect flow's signature is its form)
must carry the library field's bounds. The last tests check that the checker itself catches a re-declared bound.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import BaseModel, Field, TypeAdapter
from pydantic.fields import FieldInfo

from brandtune.config import (
    SLUG_PATTERN,
    EvalConfig,
    GenerateConfig,
    IngestConfig,
    TrainConfig,
    field_type,
)
from flows._params import BrandSlug, EvaluationParams, GenerationParams, TrainingParams

#: Each flow parameter model and the library config it becomes.
PARAMS: list[tuple[type[BaseModel], type[BaseModel]]] = [
    (TrainingParams, TrainConfig),
    (EvaluationParams, EvalConfig),
    (GenerationParams, GenerateConfig),
]

#: Fields that only a flow has, with the reason no library config holds them.
FLOW_ONLY: dict[tuple[str, str], str] = {
    ("TrainingParams", "num_processes"): "how many processes `accelerate launch` starts: an argument of "
    "brandtune.training.launch(), not part of what is trained",
    (
        "TrainingParams",
        "accelerate_config",
    ): "the name of a file in configs/accelerate/ on the worker; the library "
    "takes the path (launch(accelerate_config=...))",
    ("TrainingParams", "retries"): "Prefect task retries of the training",
    ("TrainingParams", "retry_delay_seconds"): "Prefect task retry delay",
    ("TrainingParams", "timeout_minutes"): "Prefect task timeout",
}

#: The flows' own parameters that share a name with the library config they feed.
FLOW_SIGNATURES: list[tuple[str, str, type[BaseModel]]] = [
    ("flows.ingest", "ingest_flow", IngestConfig),
    ("flows.train", "train_flow", TrainConfig),
    ("flows.evaluate", "evaluate_flow", EvalConfig),
    ("flows.generate", "generate_flow", GenerateConfig),
    ("flows.retrain", "retrain_flow", EvalConfig),
]
#: Signature parameters that may be empty where the library field is not, and whose default may differ.
SIGNATURE_EMPTY_MEANS_BRAND = {("ingest_flow", "resolution"): "empty: brand.yaml's resolution"}
SIGNATURE_OWN_DEFAULT = {
    ("generate_flow", "settings"): "the form starts with two of acme's settings as an example",
    ("generate_flow", "prompt"): "the library has no default prompt; the form starts with the plain one",
}
#: ``brand`` in a flow is a slug (a folder under data/brands); the library configs also take a brand folder path.
SLUG_PARAMS = {"brand"}


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``annotation`` (``M``, ``M | None``, ``list[M]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if found := _nested_model(arg):
            return found
    return None


def _default(info: FieldInfo) -> Any:
    return info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]


def _field_problems(where: str, flow: FieldInfo, lib: FieldInfo) -> list[str]:
    checks = {
        "annotation": (flow.annotation, lib.annotation),
        "bounds": (flow.metadata, lib.metadata),
        "default": (_default(flow), _default(lib)),
        "description": (flow.description, lib.description),
    }
    return [f"{where}: {what} {a!r} != library's {b!r}" for what, (a, b) in checks.items() if a != b]


def drift(model: type[BaseModel], library: type[BaseModel] | None, path: str = "") -> list[str]:
    """Every way ``model``'s fields (recursively) differ from ``library``'s namesakes; [] when none."""
    problems: list[str] = []
    for name, info in model.model_fields.items():
        where = f"{path or model.__name__}.{name}"
        lib = library.model_fields.get(name) if library is not None else None
        if not info.description:
            problems.append(f"{where}: no description (the Prefect form shows one for every field)")
        if lib is None:
            if not any((cls.__name__, name) in FLOW_ONLY for cls in model.__mro__):
                problems.append(
                    f"{where}: {library.__name__ if library else 'the library'} has no such field; derive the "
                    "model from the library config, or add it to FLOW_ONLY with the reason"
                )
        else:
            problems += _field_problems(where, info, lib)
        nested = _nested_model(info.annotation)
        if nested is not None:
            lib_nested = _nested_model(lib.annotation) if lib is not None else None
            if nested is not lib_nested:  # a flow-side model: compare it field by field too
                problems += drift(nested, lib_nested, where)
    return problems


@pytest.mark.parametrize(("model", "library"), PARAMS, ids=lambda m: m.__name__)
def test_flow_params_are_the_library_fields(model: type[BaseModel], library: type[BaseModel]) -> None:
    assert drift(model, library) == []
    copied = [n for n in model.model_fields if n in library.model_fields]
    assert copied, f"{model.__name__} shares no field with {library.__name__}"


def test_the_allow_list_names_only_real_flow_only_fields() -> None:
    models = {m.__name__: (m, lib) for m, lib in PARAMS}
    for (model, name), reason in FLOW_ONLY.items():
        flow, library = models[model]
        assert name in flow.model_fields and name not in library.model_fields, (model, name)
        assert len(reason) > 10


def _schema(annotation: Any) -> Any:
    """The JSON schema of a type without titles and descriptions: what is left are the type and its bounds."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in ("title", "description")}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return strip(TypeAdapter(annotation).json_schema())


def _signature(module: str, name: str) -> Iterator[tuple[str, Any, Any]]:
    import importlib

    fn: Callable[..., Any] = getattr(importlib.import_module(module), name).fn
    hints = typing.get_type_hints(fn, include_extras=True)
    for param in inspect.signature(fn).parameters.values():
        yield param.name, hints[param.name], param.default


def signature_drift(flow: str, params: Iterator[tuple[str, Any, Any]], library: type[BaseModel]) -> list[str]:
    """How a flow's own parameters differ from ``library``'s namesakes (type, bounds, default)."""
    problems = []
    for name, hint, default in params:
        lib = library.model_fields.get(name)
        if lib is None:
            continue
        where = f"{flow}({name})"
        if name in SLUG_PARAMS:
            if _schema(hint) != _schema(BrandSlug):
                problems.append(f"{where}: not flows._params.BrandSlug")
            continue
        optional = (flow, name) in SIGNATURE_EMPTY_MEANS_BRAND
        expected = field_type(library, name, optional=optional)
        if _schema(hint) != _schema(expected):
            problems.append(f"{where}: {_schema(hint)} != library's {_schema(expected)}")
        lib_default = None if optional else _default(lib)
        if (flow, name) not in SIGNATURE_OWN_DEFAULT and default != lib_default:
            problems.append(f"{where}: default {default!r} != library's {lib_default!r}")
    return problems


@pytest.mark.parametrize(
    ("module", "flow", "library"), FLOW_SIGNATURES, ids=lambda v: getattr(v, "__name__", v)
)
def test_flow_signatures_carry_the_library_bounds(module: str, flow: str, library: type[BaseModel]) -> None:
    assert signature_drift(flow, _signature(module, flow), library) == []


def test_brand_slugs_share_one_pattern() -> None:
    assert _schema(BrandSlug)["pattern"] == SLUG_PATTERN
    from brandtune.config import BrandSpec

    BrandSpec.model_validate(
        {"name": "a-1", "trigger": "zz", "subject": "s", "palette": ["#000000"], "evaluation_prompts": ["p"]}
    )


def test_a_redeclared_bound_is_caught() -> None:
    class Drifted(TrainingParams):
        rank: int = Field(default=8, ge=1, le=256, description=TrainConfig.model_fields["rank"].description)

    class Undescribed(EvaluationParams):
        batch_size: int = Field(default=8, ge=1, le=64)

    class Extra(GenerationParams):
        quality: int = Field(default=1, description="A knob only this flow has.")

    assert drift(Drifted, TrainConfig) == [
        "Drifted.rank: bounds [Ge(ge=1), Le(le=256)] != library's [Ge(ge=1), Le(le=1024)]"
    ]
    undescribed = drift(Undescribed, EvalConfig)
    assert any("no description" in p for p in undescribed) and any(
        "description None" in p for p in undescribed
    )
    assert [p.split(":")[0] for p in drift(Extra, GenerateConfig)] == ["Extra.quality"]


def test_a_drifted_nested_model_is_caught() -> None:
    from brandtune.config import SamplerConfig

    class Sampler(SamplerConfig):
        num_inference_steps: int = Field(default=20, ge=1, le=100, description="Denoising steps per image.")

    class Nested(EvaluationParams):
        sampler: Sampler = Field(
            default_factory=Sampler, description=EvalConfig.model_fields["sampler"].description
        )

    found = drift(Nested, EvalConfig)
    assert any(p.startswith("Nested.sampler.num_inference_steps: bounds") for p in found), found


def test_a_drifted_signature_is_caught() -> None:
    from typing import Annotated

    params = [
        ("min_images", Annotated[int, Field(ge=2)], 4),
        ("resolution", Annotated[int, Field(ge=32, le=4096)] | None, None),
        ("workers", int, 0),  # the library's default, but not its bound (ge=0)
    ]
    found = signature_drift("ingest_flow", iter(params), IngestConfig)
    assert [p.split(":")[0] for p in found] == [
        "ingest_flow(min_images)",
        "ingest_flow(resolution)",
        "ingest_flow(workers)",
    ]
