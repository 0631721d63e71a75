"""brandtune.models.resolve: references that name nothing, and hub ids offline."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from brandtune.errors import ModelResolutionError
from brandtune.models import resolve_base

pytestmark = pytest.mark.usefixtures("torch_threads", "from_config")


@pytest.mark.parametrize("ref", ["builtin:nope", "./no/such/folder", "", "not a ref at all"])
def test_unknown_refs_list_the_builtins(ref: str) -> None:
    with pytest.raises(ModelResolutionError) as info:
        resolve_base(ref)
    message = str(info.value)
    assert repr(ref) in message
    assert "builtin:tiny" in message and "builtin:tiny-sdxl" in message


def test_folder_without_model_index(tmp_path: Path) -> None:
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelResolutionError, match=r"no model_index\.json"):
        resolve_base(str(tmp_path))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(ModelResolutionError, match=r"is a file, not a folder"):
        resolve_base(str(weights))


def test_hub_id_offline_fails_clearly_without_network(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub.constants

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a network connection was attempted")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(ModelResolutionError) as info:
        resolve_base("acme-labs/sd-turbo-xl@main")
    message = str(info.value)
    assert "'acme-labs/sd-turbo-xl@main'" in message
    assert "HF_HUB_OFFLINE" in message
    assert "local diffusers folder" in message and "brandtune base export" in message


@pytest.mark.parametrize(
    ("builtin", "family"),
    [("builtin:tiny", "sd1"), ("builtin:tiny-flux", "flux"), ("builtin:tiny-sd3", "sd3")],
)
def test_hub_id_from_local_hub_cache(
    builtin: str, family: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The hub path end to end, offline: a snapshot already in the HF cache resolves to its commit, whatever the
    family (a FLUX or SD3 repo with its T5 encoder and tokenizer)."""
    import huggingface_hub.constants

    source = resolve_base(builtin)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme-labs--tiny-base"
    shutil.copytree(source.path, repo / "snapshots" / commit, ignore=shutil.ignore_patterns(".*"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    resolved = resolve_base("acme-labs/tiny-base")
    assert resolved.name == "acme-labs/tiny-base"
    assert resolved.revision == commit
    assert resolved.family == family and resolved.pipeline_class == source.pipeline_class
    assert resolve_base(f"acme-labs/tiny-base@{commit}").path == resolved.path
