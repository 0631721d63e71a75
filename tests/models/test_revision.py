"""brandtune.models.revision: the revision cache is checked before it is trusted and rewritten when it is not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from brandtune.models.revision import cached_revision, compute_revision


def _folder(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    (root / "unet").mkdir(parents=True)
    (root / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (root / "unet" / "weights.bin").write_bytes(bytes(range(256)) * 64)
    return root


def test_cache_is_reused_only_while_consistent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, cache = _folder(tmp_path), tmp_path / "cache" / "rev.json"
    true = compute_revision(root)
    assert cached_revision(root, cache) == true
    record = json.loads(cache.read_text())
    assert record["folder"] == str(root) and [r for r, _ in record["files"]] == [
        "model_index.json",
        "unet/weights.bin",
    ]
    # a hand-edited revision (signature untouched) is not believed
    cache.write_text(json.dumps({**record, "revision": "sha256:" + "0" * 64}))
    with caplog.at_level("WARNING", logger="brandtune.models"):
        assert cached_revision(root, cache) == true
    assert str(cache) in caplog.text and "inconsistent" in caplog.text
    assert json.loads(cache.read_text())["revision"] == true  # rewritten
    # a file list edited to match a forged revision fails the same way: the list no longer hashes to it
    forged = [[r, "f" * 64] for r, _ in record["files"]]
    cache.write_text(json.dumps({**record, "files": forged}))
    assert cached_revision(root, cache) == true
    # an unreadable cache: a WARNING and a fresh hash
    cache.write_text("{not json")
    caplog.clear()
    with caplog.at_level("WARNING", logger="brandtune.models"):
        assert cached_revision(root, cache) == true
    assert "unreadable" in caplog.text and str(cache) in caplog.text
    # a changed file changes the signature: hashed again, the new revision cached
    (root / "unet" / "weights.bin").write_bytes(b"other weights")
    assert cached_revision(root, cache) == compute_revision(root) != true
    # another folder's cache (same files, same signature) is not taken for this one's
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    assert cached_revision(copy, cache) == compute_revision(root)
    assert json.loads(cache.read_text())["folder"] == str(copy)
