"""``is_not_found``: what counts as "no such model, version or alias" among MLflow's errors."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST

from brandtune.registry._client import is_not_found


@pytest.mark.parametrize(
    ("message", "code", "expected"),
    [
        ("Registered Model with name=acme-lora not found", RESOURCE_DOES_NOT_EXIST, True),
        ("Registered model alias champion not found.", INVALID_PARAMETER_VALUE, True),
        ("(sqlite3.OperationalError) table registered_models not found", INTERNAL_ERROR, False),
        ("upstream proxy: page not found", INTERNAL_ERROR, False),
        ("Invalid value 'not found' for parameter 'alias'", INVALID_PARAMETER_VALUE, False),
    ],
)
def test_only_a_missing_resource_or_alias_is_not_found(message: str, code: int, expected: bool) -> None:
    assert is_not_found(MlflowException(message, code)) is expected


def test_a_real_store_missing_alias_and_model_are_not_found(tmp_path: object) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(MlflowException) as missing_model:
        client.get_registered_model("nosuch-lora")
    assert is_not_found(missing_model.value)
    client.create_registered_model("acme-lora")
    with pytest.raises(MlflowException) as missing_alias:
        client.get_model_version_by_alias("acme-lora", "champion")
    assert is_not_found(missing_alias.value)
