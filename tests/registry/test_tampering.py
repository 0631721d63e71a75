"""Tampering with what the registry serves: the cached brandtune.json, the cached weights, the copy in the MLflow
artifact store, and two real processes pulling into one --dest. Each is healed by a fresh, verified download or
refused in one line naming the version, the path and what to do; none is silently used."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from registry_helpers import REPO_ROOT

from brandtune.errors import RegistryError
from brandtune.fsutil import sha256_file
from brandtune.provenance import PROVENANCE_NAME, WEIGHTS_NAME
from brandtune.settings import Settings

SHA_TAG = "brandtune.adapter_sha256"


@pytest.fixture(scope="module")
def settings(versions: list[str]) -> Settings:
    return Settings.from_env()


def _version(settings: Settings, number: str):
    from brandtune.registry._client import client
    from brandtune.registry._versions import resolve

    return resolve(client(settings), "acme-lora", None, number, settings.tracking_uri)


def _store_file(settings: Settings, number: str, name: str) -> Path:
    """The file ``adapter_weights/<name>`` of version ``number`` in the local artifact store."""
    import mlflow

    source = _version(settings, number).source.removeprefix("models:/")
    location = mlflow.MlflowClient(settings.tracking_uri).get_logged_model(source).artifact_location
    path = Path(unquote(urlparse(location).path)) / "adapter_weights" / name
    assert path.is_file(), path
    return path


def _entry(settings: Settings, number: str) -> Path:
    from brandtune.registry import fetch

    return fetch(f"models:/acme-lora/{number}", settings=settings).path.parent


def _flip_last(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0xFF])


def _other_revision(data: bytes) -> bytes:
    info = json.loads(data)
    return json.dumps({**info, "base_revision": "sha256:" + "1" * 64}).encode()


@contextmanager
def _tampered(path: Path, edit=_flip_last) -> Iterator[None]:
    """``path`` edited for the duration (the store is shared by the session's other modules)."""
    original = path.read_bytes()
    path.write_bytes(edit(original))
    try:
        yield
    finally:
        path.write_bytes(original)


def test_edited_cached_brandtune_json_is_healed_and_never_redirects_the_base(
    versions, settings, caplog
) -> None:
    from brandtune.registry import fetch

    number = versions[0]
    entry = _entry(settings, number)
    prov = entry / "adapter_weights" / PROVENANCE_NAME
    info = json.loads(prov.read_text())
    real_base = info["base_model"]
    prov.write_text(
        json.dumps({**info, "base_model": "/tmp/evil-base", "base_revision": "sha256:" + "0" * 64})
    )
    with caplog.at_level("WARNING", logger="brandtune.registry"):
        adapter = fetch(f"models:/acme-lora/{number}", settings=settings)
    assert not adapter.cached
    assert str(prov) in caplog.text and "base_model" in caplog.text and "downloading it again" in caplog.text
    assert json.loads(prov.read_text())["base_model"] == real_base
    assert adapter.base_model == real_base == adapter.version.base_model
    assert adapter.base_revision == adapter.version.base_revision
    # a value the registry has no tag for is checked against the provenance the (hashed) weights carry
    prov.write_text(json.dumps({**info, "resolution": 4096}))
    caplog.clear()
    with caplog.at_level("WARNING", logger="brandtune.registry"):
        assert (
            fetch(f"models:/acme-lora/{number}", settings=settings).provenance["resolution"]
            == info["resolution"]
        )
    assert "resolution" in caplog.text and "adapter weights record" in caplog.text


def test_flipped_byte_in_cached_weights_is_healed(versions, settings, caplog) -> None:
    from brandtune.registry import fetch

    number = versions[1]
    weights = _entry(settings, number) / "adapter_weights" / WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="brandtune.registry"):
        adapter = fetch(f"models:/acme-lora/{number}", settings=settings)
    assert not adapter.cached and str(weights) in caplog.text
    assert sha256_file(weights) == adapter.version.tags[SHA_TAG] == adapter.sha256
    assert fetch(f"models:/acme-lora/{number}", settings=settings).cached


@pytest.mark.parametrize("name", [WEIGHTS_NAME, PROVENANCE_NAME])
def test_tampered_artifact_store_copy_is_refused_and_nothing_cached(versions, settings, name) -> None:
    import shutil

    from brandtune.registry import fetch

    number = versions[0]
    entry = _entry(settings, number)
    store = _store_file(settings, number, name)
    shutil.rmtree(entry)  # a machine that has not cached it yet downloads the store's copy
    with _tampered(store, _flip_last if name == WEIGHTS_NAME else _other_revision):
        with pytest.raises(RegistryError) as err:
            fetch(f"models:/acme-lora/{number}", settings=settings)
        message = str(err.value)
        assert "\n" not in message
        assert f"models:/acme-lora/{number}" in message and str(store) in message
        assert "Restore it from a backup" in message
        assert not entry.exists()
        assert not [p for p in entry.parent.iterdir() if p.name.startswith(".tmp-")]
    restored = fetch(f"models:/acme-lora/{number}", settings=settings)
    assert not restored.cached and entry.is_dir()


def test_cached_weights_and_store_both_tampered_is_refused(versions, settings) -> None:
    from brandtune.registry import fetch

    number = versions[1]
    cached = _entry(settings, number) / "adapter_weights" / WEIGHTS_NAME
    # a tampered cache cannot be healed from a tampered store: refused, not used
    store = _store_file(settings, number, WEIGHTS_NAME)
    with (
        _tampered(cached),
        _tampered(store),
        pytest.raises(RegistryError, match="artifact store holds a corrupt"),
    ):
        fetch(f"models:/acme-lora/{number}", settings=settings)
    assert fetch(f"models:/acme-lora/{number}", settings=settings).sha256 == sha256_file(cached)


def test_doctor_finds_and_removes_unverified_corrupt_and_leftover_cache_entries(versions, settings) -> None:
    import shutil

    from brandtune import doctor
    from brandtune.registry._cache import MARKER, TEMP_STALE_S, check_cache

    assert "brandtune.registry._cache:check_cache" in doctor.CHECKS
    first, second = (_entry(settings, n) for n in versions)
    assert check_cache(settings, brand="acme") == []
    (first / MARKER).unlink()  # as an older brandtune that published before checking left it
    weights = second / "adapter_weights" / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:-10])  # truncated
    leftover = first.parent / f".tmp-{first.name}-dead"
    shutil.copytree(second, leftover)
    old = time.time() - TEMP_STALE_S - 60
    os.utime(leftover, (old, old))
    young = first.parent / f".tmp-{first.name}-live"
    young.mkdir()
    found = {Path(f.subject): f for f in doctor.examine(settings, brand="acme") if f.check == "adapter-cache"}
    assert set(found) == {first, second, leftover}
    assert "never verified" in found[first].problem and "corrupt" in found[second].problem
    assert str(weights) in found[second].problem and not any(f.fixed for f in found.values())
    fixed = check_cache(settings, brand="acme", fix=True)
    assert all(f.fixed for f in fixed) and len(fixed) == 3
    assert not first.exists() and not second.exists() and not leftover.exists() and young.is_dir()
    young.rmdir()
    assert check_cache(settings, brand="acme") == []
    for number in versions:  # fetched and verified again on use
        assert _entry(settings, number).joinpath(MARKER).is_file()
    assert check_cache(settings, brand="acme") == []


def _pull_process(dest: Path, number: str, wait_s: float, **env: str) -> subprocess.Popen:
    code = (
        "import sys, logging; from pathlib import Path; from brandtune.registry import pull\n"
        "from brandtune.errors import RegistryError\n"
        f"try:\n    pull('acme', {number!r}, Path({str(dest)!r}), wait_s={wait_s})\n"
        "except RegistryError as exc:\n    print(exc, file=sys.stderr); sys.exit(3)\n"
    )
    full = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **env}
    return subprocess.Popen(
        [sys.executable, "-c", code], env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(predicate, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _consistent(dest: Path) -> dict:
    meta = json.loads((dest / "adapter.json").read_text())
    assert sha256_file(dest / WEIGHTS_NAME) == meta["sha256"]
    assert json.loads((dest / PROVENANCE_NAME).read_text())["files"][WEIGHTS_NAME] == meta["sha256"]
    assert not [p.name for p in dest.iterdir() if p.name.endswith(".tmp")]
    return meta


def test_second_pull_into_one_dest_waits_then_is_refused_and_a_killed_pull_leaves_no_lock(
    versions, settings, tmp_path
) -> None:
    from brandtune.registry import fetch

    for number in versions:  # cached here, so the processes only copy
        fetch(f"models:/acme-lora/{number}", settings=settings)
    dest = tmp_path / "dest"
    holder = _pull_process(
        dest, versions[0], 30, BRANDTUNE_FAULT="registry.pull_locked", BRANDTUNE_FAULT_ACTION="hang"
    )
    lock = dest / ".brandtune-pull.lock"
    try:
        _wait_for(
            lambda: lock.is_file() and lock.read_text().strip() == str(holder.pid), "the first pull's lock"
        )
        second = _pull_process(dest, versions[1], 1.0)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 3, err
        line = err.strip().splitlines()[-1]
        assert str(dest) in line and f"pid {holder.pid}" in line and "another --dest" in line
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    third = _pull_process(dest, versions[1], 5.0)  # the kernel dropped the killed holder's lock
    _, err = third.communicate(timeout=120)
    assert third.returncode == 0, err
    assert _consistent(dest)["version"] == versions[1]


def test_two_concurrent_pulls_into_one_dest_take_turns(versions, settings, tmp_path) -> None:
    dest = tmp_path / "dest"
    procs = [_pull_process(dest, number, 120.0) for number in versions]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    assert _consistent(dest)["version"] in versions


def test_fetch_killed_before_publishing_leaves_no_cache_entry(versions, settings) -> None:
    import shutil

    from brandtune.registry import fetch
    from brandtune.registry._cache import TEMP_STALE_S, check_cache

    number = versions[0]
    entry = _entry(settings, number)
    shutil.rmtree(entry)
    code = f"from brandtune.registry import fetch; fetch('models:/acme-lora/{number}')"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "BRANDTUNE_FAULT": "registry.cache_verified"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (staging,) = [p for p in entry.parent.iterdir() if p.name.startswith(f".tmp-{entry.name}-")]
    assert not entry.exists()  # verified, but killed before the rename: nothing published
    adapter = fetch(f"models:/acme-lora/{number}", settings=settings)
    assert not adapter.cached and entry.is_dir()
    assert check_cache(settings, brand="acme") == []  # a young staging folder may be a live download
    old = time.time() - TEMP_STALE_S - 1
    os.utime(staging, (old, old))
    (finding,) = check_cache(settings, brand="acme", fix=True)
    assert finding.subject == str(staging) and finding.fixed and not staging.exists()


def test_pull_killed_midway_leaves_no_adapter_json_until_a_rerun(versions, settings, tmp_path) -> None:
    dest = tmp_path / "dest"
    first = _pull_process(dest, versions[0], 5.0)
    assert first.wait(timeout=180) == 0, first.stderr.read()
    killed = _pull_process(dest, versions[1], 5.0, BRANDTUNE_FAULT="registry.pull_copied")
    assert killed.wait(timeout=180) == -signal.SIGKILL, killed.stderr.read()
    # the weights are the new version's, and no adapter.json claims they are the old one's
    assert not (dest / "adapter.json").exists()
    assert not [p.name for p in dest.iterdir() if p.name.endswith(".tmp")]
    again = _pull_process(dest, versions[1], 5.0)
    assert again.wait(timeout=180) == 0, again.stderr.read()
    assert _consistent(dest)["version"] == versions[1]
