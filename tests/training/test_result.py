"""brandtune.training.result: a TrainResult crosses the process boundary typed, and a missing, invalid or
extra-field result file is a clear error."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from brandtune.errors import TrainingError
from brandtune.training import TrainResult
from brandtune.training.result import read_result_file, write_result_file


def _result(tmp_path: Path, **fields: object) -> TrainResult:
    base = {
        "run_dir": tmp_path / "run",
        "adapter_dir": tmp_path / "run" / "adapter",
        "mlflow_run_id": "abc123",
        "steps": 12,
        "final_loss": 0.25,
        "cache_hit": True,
        "resumed_from": 4,
        "config_hash": "f" * 16,
        "invocation_id": "local-1",
    }
    return TrainResult(**{**base, **fields})


def test_a_result_crosses_the_process_boundary_typed(tmp_path: Path) -> None:
    result = _result(tmp_path)
    write_result_file(tmp_path / "result.json", result)
    data = json.loads((tmp_path / "result.json").read_text())
    assert data["cache_hit"] is True and data["steps"] == 12 and data["final_loss"] == 0.25, (
        "JSON types, not strings"
    )
    back = read_result_file(tmp_path / "result.json")
    assert back == result and isinstance(back.run_dir, Path) and back.cache_hit is True
    # a loss that is not a number survives the trip (a resume at the last step trains no step)
    write_result_file(tmp_path / "nan.json", _result(tmp_path, final_loss=float("nan"), mlflow_run_id=None))
    nan = read_result_file(tmp_path / "nan.json")
    assert math.isnan(nan.final_loss) and nan.mlflow_run_id is None
    # a run folder written before results were typed (every value a string) still reads back as it was meant
    (tmp_path / "old.json").write_text(json.dumps({k: str(v) for k, v in result.model_dump().items()}))
    assert read_result_file(tmp_path / "old.json") == result


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, r"wrote no result: .*missing\.json is missing"),
        ("{not json", r"is not a valid training result \(the file: Invalid JSON"),
        ("{}", r"is not a valid training result \(run_dir: Field required; adapter_dir: Field required"),
        ('{"steps": "many"}', r"steps: Input should be a valid integer"),
        ("[]", r"is not a valid training result"),
    ],
)
def test_a_missing_or_invalid_result_is_a_clear_error(
    tmp_path: Path, content: str | None, needle: str
) -> None:
    path = tmp_path / ("missing.json" if content is None else "result.json")
    if content is not None:
        path.write_text(content)
    with pytest.raises(TrainingError, match=needle) as err:
        read_result_file(path, "training of brand 'acme'")
    assert str(err.value).startswith("training of brand 'acme'") and str(path) in str(err.value)


def test_extra_fields_in_a_result_are_refused(tmp_path: Path) -> None:
    data = _result(tmp_path).model_dump(mode="json")
    (tmp_path / "result.json").write_text(json.dumps({**data, "cache_hitt": True}))
    with pytest.raises(TrainingError, match="cache_hitt: Extra inputs are not permitted"):
        read_result_file(tmp_path / "result.json")
