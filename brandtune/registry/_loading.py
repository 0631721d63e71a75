"""Downstream: resolve ``models:/<name>@<alias>`` once, cache the adapter by version, load it onto its base.

The cache is ``<cache_dir>/adapters/<name>/<version>/<logged model id>/`` (the MLflow model folder: ``MLmodel``
and ``adapter_weights/``; the logged model id keeps version 1 of two registries apart). A download lands in a
staging folder beside it, is verified against the registry's record and only then renamed into place, so a reader
sees a verified entry or none. A version's files never change in the registry, so a cached version is reused
without asking the server for more than the alias, but it is verified again on every use (the weights' sha256
against the version's ``brandtune.adapter_sha256`` tag, ``brandtune.json`` against the lineage tags); a corrupt
entry is replaced by a fresh, verified download. The base model and revision are the registry's tags, never the
cached file's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brandtune.errors import ConfigError, ModelResolutionError, RegistryError
from brandtune.faults import fault_point
from brandtune.fsutil import atomic_write_json, publish_dir, replace_dir, sha256_file, staging_dir
from brandtune.provenance import PROVENANCE_NAME, WEIGHTS_NAME
from brandtune.registry._cache import (
    ADAPTER_SUBDIR,
    CorruptAdapterError,
    Expected,
    verify_adapter,
    write_marker,
)
from brandtune.registry._client import call, check_reachable, client
from brandtune.registry._versions import (
    RegisteredVersion,
    model_name,
    model_uri,
    parse_uri,
    resolve,
)
from brandtune.settings import Settings

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

    from brandtune.models import ResolvedBase

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FetchedAdapter:
    """A registered adapter version on local disk, checked.

    Attributes:
        version: The registry version it came from.
        alias: The alias it was asked for by (``None`` for a version number).
        path: Folder with ``pytorch_lora_weights.safetensors`` and ``brandtune.json``.
        provenance: The adapter's ``brandtune.json``.
        sha256: The weights' sha256 (equal to the version's tag).
        cached: Whether it was already in the cache (no download).
    """

    version: RegisteredVersion
    alias: str | None
    path: Path
    provenance: dict[str, Any]
    sha256: str
    cached: bool

    @property
    def base_model(self) -> str:
        """The base the adapter was trained on, as the registry records it (``brandtune.json`` is checked
        against this tag, never used instead of it)."""
        return self.version.base_model or str(self.provenance.get("base_model", ""))

    @property
    def base_revision(self) -> str:
        return self.version.base_revision or str(self.provenance.get("base_revision", ""))


def adapter_cache_dir(name: str, version: str, settings: Settings | None = None) -> Path:
    """The cache folder of version ``version`` of ``name`` (one subfolder per registry source)."""
    settings = settings or Settings.from_env()
    return settings.cache_dir / "adapters" / name / str(version)


def _source_key(version: RegisteredVersion) -> str:
    """The version's artifact identity (its LoggedModel id), so two registries' ``acme-lora`` v1 never collide."""
    key = re.sub(r"[^\w.-]+", "_", version.source.removeprefix("models:/")).strip("._")
    return key or "source"


def fetch(uri: str, *, settings: Settings | None = None) -> FetchedAdapter:
    """Resolve ``uri`` to a version (one registry call), verify its cached copy or download and verify a fresh one.

    A cached entry is verified on every use (:func:`~brandtune.registry._cache.verify_adapter`: the weights' sha256
    against the version's tag, ``brandtune.json`` against the tags and the weights); one that fails is downloaded
    again, with a WARNING naming it. A download is verified in a staging folder beside the cache and only then
    published, so a corrupt download never lands in the cache.

    Raises:
        ConfigError: the URI is malformed.
        RegistryError: unknown model/alias/version, unreachable server, a version without its hash tag, or an
            artifact-store copy that does not match the registry's record.
    """
    settings = settings or Settings.from_env()
    name, alias, number = parse_uri(uri)
    check_reachable(settings.tracking_uri)
    mlc = client(settings)
    version = resolve(mlc, name, alias, number, settings.tracking_uri)
    expected = Expected.of(version)
    folder = adapter_cache_dir(name, version.version, settings) / _source_key(version)
    info: dict[str, Any] | None = None
    if folder.exists():
        try:
            info = verify_adapter(folder, expected)
        except CorruptAdapterError as exc:
            logger.warning(
                "cached adapter %s of %s failed verification (%s): downloading it again",
                folder,
                version.uri,
                exc,
            )
    cached = info is not None
    if info is None:
        info = _download_verified(version, expected, folder, settings)
    return FetchedAdapter(version, alias, folder / ADAPTER_SUBDIR, info, expected.sha256, cached)


def _download_verified(
    version: RegisteredVersion, expected: Expected, folder: Path, settings: Settings
) -> dict[str, Any]:
    """Download ``version`` into a staging folder beside ``folder``, verify it, then publish it as ``folder``
    (replacing a corrupt entry there). Returns the verified ``brandtune.json``."""
    replace = folder.exists()
    with staging_dir(folder) as tmp:
        call(
            lambda: _download(version, tmp, settings),
            uri=settings.tracking_uri,
            what=f"download {version.uri}",
        )
        try:
            info = verify_adapter(tmp, expected)
        except CorruptAdapterError as exc:
            rel = exc.file.relative_to(tmp).as_posix()
            raise RegistryError(
                f"{version.uri}: the registry's artifact store holds a corrupt {rel} at "
                f"{_artifact_location(version, settings)}/{rel} ({exc.detail}); it was changed after registration, "
                "so nothing was cached or loaded. Restore it from a backup, or retrain and register a new version."
            ) from None
        write_marker(tmp, version, expected)
        fault_point("registry.cache_verified")
        if replace:
            replace_dir(tmp, folder)
        elif not publish_dir(tmp, folder):  # another process published it first: use theirs, verified
            return verify_adapter(folder, expected)
    logger.info("downloaded and verified %s into %s", version.uri, folder)
    return info


def _artifact_location(version: RegisteredVersion, settings: Settings) -> str:
    """Where the version's artifacts live (its logged model's artifact location), for an error message."""
    from mlflow.exceptions import MlflowException

    model_id = version.source.removeprefix("models:/")
    try:
        return str(client(settings).get_logged_model(model_id).artifact_location)
    except (MlflowException, OSError):
        return version.source


def _download(version: RegisteredVersion, dest: Path, settings: Settings) -> None:
    import mlflow.artifacts

    # a retry after a half download starts from an empty folder
    for child in dest.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    mlflow.artifacts.download_artifacts(
        artifact_uri=version.uri, dst_path=str(dest), tracking_uri=settings.tracking_uri
    )
    if not (dest / ADAPTER_SUBDIR / WEIGHTS_NAME).is_file():
        raise RegistryError(
            f"{version.uri} has no {ADAPTER_SUBDIR}/{WEIGHTS_NAME}: it is not a brandtune adapter model. "
            "Register adapters with `brandtune register`."
        )


def resolve_adapter_base(adapter: FetchedAdapter, base_model: str | None, settings: Settings) -> ResolvedBase:
    """Resolve the base an adapter was trained on and check that its revision is the recorded one.

    Args:
        adapter: The fetched adapter.
        base_model: A local folder (or other reference) to use instead of the recorded name, e.g. for a
            local-folder base that has another path on this machine; its revision must still match.
        settings: State locations.
    """
    from brandtune.models import resolve_base
    from brandtune.registry._flavor import is_hub_reference

    name, revision = adapter.base_model, adapter.base_revision
    ref = base_model or (f"{name}@{revision}" if is_hub_reference(name, revision) else name)
    try:
        resolved = resolve_base(ref, settings=settings)
    except (ModelResolutionError, OSError) as exc:
        hint = (
            ""
            if base_model
            else (
                f" If {name!r} is a local folder on the training machine, pass base_model=<its path here> "
                f"(a folder with revision {revision})."
            )
        )
        raise RegistryError(
            f"Base model {name!r} of {adapter.version.uri} cannot be resolved: {exc}.{hint}"
        ) from exc
    if revision and resolved.revision != revision:
        raise RegistryError(
            f"Base model mismatch for {adapter.version.uri}: it was trained on {name} revision {revision}, but "
            f"{ref!r} resolves to revision {resolved.revision} here. Use the same base (for builtin models, the same "
            "brandtune version) or retrain on this one."
        )
    return resolved


def _normalize(uris: str | list[tuple[str, float]]) -> list[tuple[str, float]]:
    if isinstance(uris, str):
        return [(uris, 1.0)]
    if not uris:
        raise ConfigError("load_pipeline needs at least one models:/ URI (or a list of (uri, weight) pairs).")
    return [(str(u), float(w)) for u, w in uris]


def adapter_name(version: RegisteredVersion) -> str:
    """The peft adapter name a version is loaded under: ``<name>_v<version>`` with ``-`` as ``_``."""
    return f"{version.name.replace('-', '_')}_v{version.version}"


def load_pipeline(
    uris: str | list[tuple[str, float]],
    *,
    device: str | None = None,
    dtype: torch.dtype | str | None = None,
    fuse: bool = False,
    base_model: str | None = None,
    settings: Settings | None = None,
) -> DiffusionPipeline:
    """A diffusers pipeline with registered adapters loaded onto their shared base.

    Args:
        uris: ``"models:/acme-lora@champion"`` (or ``models:/acme-lora/3``), or ``[(uri, weight), ...]`` to
            combine several adapters with ``set_adapters``.
        device: Where to put the pipeline (``"cuda"``, ``"cpu"``); left on the CPU when omitted.
        dtype: Weight dtype (``torch.float16`` or ``"float16"``); the saved dtype when omitted.
        fuse: Fuse the adapters into the base weights and drop the LoRA layers: plain modules that run at the
            base model's speed; no later switching (load a fresh pipeline for another adapter).
        base_model: Use this base reference (e.g. a local folder) instead of the recorded one; its revision
            must still match the adapters'.
        settings: Tracking URI and cache location; read from the environment when omitted.

    Returns:
        The pipeline; the adapters are named ``<name>_v<version>`` (see ``pipe.get_active_adapters()``).

    Raises:
        RegistryError: unknown model/alias, tampered file, unresolvable or mismatched base, or adapters trained
            on different bases.
    """
    from brandtune.models import load_base_pipeline
    from brandtune.models.loading import load_adapter

    settings = settings or Settings.from_env()
    pairs = _normalize(uris)
    adapters = [fetch(uri, settings=settings) for uri, _ in pairs]
    first = adapters[0]
    for other in adapters[1:]:
        if (other.base_model, other.base_revision) != (first.base_model, first.base_revision):
            raise RegistryError(
                f"Adapters trained on different bases cannot be combined: {first.version.uri} uses "
                f"{first.base_model} ({first.base_revision}), {other.version.uri} uses {other.base_model} "
                f"({other.base_revision})."
            )
    resolved = resolve_adapter_base(first, base_model, settings)
    pipe = load_base_pipeline(resolved, torch_dtype=_dtype(dtype), device=device)
    names = []
    for adapter in adapters:
        name = adapter_name(adapter.version)
        if name not in names:
            load_adapter(pipe, adapter.path, weight_name=WEIGHTS_NAME, adapter_name=name)
            names.append(name)
    weights = [w for _, w in pairs][: len(names)]
    if len(names) > 1 or weights != [1.0]:
        pipe.set_adapters(names, adapter_weights=weights)
    if fuse:
        pipe.fuse_lora(adapter_names=names)
        pipe.unload_lora_weights()  # the fused weights stay; the peft wrappers (a per-layer cost) go
    logger.info("loaded %s on %s", ", ".join(a.version.uri for a in adapters), resolved.name)
    return pipe


def _dtype(dtype: Any) -> Any:
    if dtype is None or not isinstance(dtype, str):
        return dtype
    import torch

    value = getattr(torch, dtype.removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ConfigError(f"dtype {dtype!r} is not a torch dtype: use float32, float16 or bfloat16.")
    return value


#: How long a pull waits for another pull into the same ``--dest`` before it gives up.
PULL_WAIT_S = 30.0
PULL_LOCK = ".brandtune-pull.lock"


@contextlib.contextmanager
def _dest_lock(dest: Path, wait_s: float) -> Iterator[None]:
    """Hold ``dest``'s pull lock (an ``flock``, so a killed holder never leaves it stale), waiting up to
    ``wait_s`` seconds for another pull to finish."""
    import fcntl

    path = dest / PULL_LOCK
    with open(path, "a+", encoding="utf-8") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "unknown"
                    raise RegistryError(
                        f"Another `brandtune pull` (pid {holder}) is writing into {dest}; waited {wait_s:g} s for "
                        "it. Wait until it finishes and pull again, or pull into another --dest."
                    ) from None
                time.sleep(0.2)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _copy_checked(src: Path, dest: Path, sha: str | None) -> None:
    """Copy ``src`` to ``dest`` through a temporary file of its own, check its sha256, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, src.open("rb") as handle:
            shutil.copyfileobj(handle, out)
            out.flush()
            os.fsync(out.fileno())
        if sha is not None and (got := sha256_file(Path(tmp))) != sha:
            raise RegistryError(
                f"Copy of {src} to {dest} has sha256 {got}, expected {sha}: the disk or the cache changed "
                "during the pull. Pull again."
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pull(
    brand: str,
    alias_or_version: str | int,
    dest: Path,
    *,
    settings: Settings | None = None,
    wait_s: float = PULL_WAIT_S,
) -> Path:
    """Write a registered adapter's files and an ``adapter.json`` for generators that do not use brandtune.

    The adapter is fetched and verified first (:func:`fetch`). Pulls into one ``dest`` take turns: a second pull
    waits up to ``wait_s`` seconds for the first, then is refused in one line. ``adapter.json`` is removed first and
    written last, so where it exists the files beside it are the ones it names; each file is copied to a temporary
    name, checked against its hash and renamed into place.

    Args:
        brand: Brand slug (model ``<brand>-lora``).
        alias_or_version: ``"champion"`` / ``"@champion"``, or a version number.
        dest: Folder to write into (created; existing files of the same names are replaced atomically).
        settings: Tracking URI and cache location; read from the environment when omitted.
        wait_s: How long to wait for another pull into ``dest``.

    Returns:
        ``dest``.

    Raises:
        RegistryError: what :func:`fetch` raises, or another pull held ``dest`` for longer than ``wait_s``.
    """
    name = model_name(brand)
    adapter = fetch(model_uri(brand, alias_or_version), settings=settings)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    files = {str(k): str(v) for k, v in dict(adapter.provenance.get("files") or {}).items()}
    files[WEIGHTS_NAME] = adapter.sha256
    with _dest_lock(dest, wait_s):
        fault_point("registry.pull_locked")
        # adapter.json goes first and comes back last: where it exists, the files beside it are the ones it names
        (dest / "adapter.json").unlink(missing_ok=True)
        for filename in sorted(files):
            _copy_checked(adapter.path / filename, dest / filename, files[filename])
        _copy_checked(adapter.path / PROVENANCE_NAME, dest / PROVENANCE_NAME, None)
        fault_point("registry.pull_copied")
        atomic_write_json(dest / "adapter.json", _adapter_json(adapter, name, dest))
    logger.info("pulled %s to %s", adapter.version.uri, dest)
    return dest


def _adapter_json(adapter: FetchedAdapter, name: str, dest: Path) -> dict[str, Any]:
    prov = adapter.provenance
    trigger, subject = str(prov.get("trigger", "")), str(prov.get("subject", ""))
    return {
        "registered_model": name,
        "version": adapter.version.version,
        "alias": adapter.alias,
        "source_run_id": adapter.version.run_id,
        "base_model": adapter.base_model,
        "base_revision": adapter.base_revision,
        "base_family": prov.get("base_family"),
        "pipeline_class": prov.get("pipeline_class"),
        "trigger": trigger,
        "subject": subject,
        "prompt_prefix": f"{trigger} {subject}".strip(),
        "resolution": prov.get("resolution"),
        "weights": WEIGHTS_NAME,
        "sha256": adapter.sha256,
        "dataset_fingerprint": prov.get("dataset_fingerprint"),
        "load_with": f"pipe.load_lora_weights('{dest}', weight_name='{WEIGHTS_NAME}')",
    }
