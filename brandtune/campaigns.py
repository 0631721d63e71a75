"""Standard campaigns: a brand's ``campaigns:`` (brand.yaml) generated from a registered version, once per version.

``run_campaign(brand, name)`` resolves the model (normally ``@champion``) to one version and generates the
campaign from that version into a dated, versioned folder::

    <home>/campaigns/<brand>/<campaign>/<YYYY-MM-DD>-v<version>-<key>/

``key`` is a hash of what decides the images: the campaign's settings, the version, the adapter's sha256, the
base model and revision, and the device and dtype (when not cpu/float32). The folder's ``campaign.json``, written
last and atomically, marks it complete. A later run with the same key finds it and generates nothing ("already
generated"), whatever its date; a run that was interrupted resumes in its own folder (generation skips the images
already made).

Each completed campaign is an MLflow run (``brandtune.stage=campaign``) in the brand's experiment: its parameters,
the number of images per setting, the gallery, manifest and images as artifacts, and the model version it used
as the run's model input (MLflow links the run to that version's logged model).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brandtune.config import DeviceName, DtypeName, Placement, load_brand, resolve_placement
from brandtune.errors import GenerationError
from brandtune.fsutil import atomic_write_json, canonical_json, sha256_bytes
from brandtune.settings import Settings

if TYPE_CHECKING:
    from brandtune.config import BrandSpec
    from brandtune.config.campaign import CampaignSpec
    from brandtune.registry import FetchedAdapter

logger = logging.getLogger(__name__)

RECORD = "campaign.json"


@dataclass(frozen=True)
class CampaignRun:
    """One standard campaign, generated now or found already generated.

    Attributes:
        brand: The brand's slug.
        campaign: The campaign's name.
        version: The model version it was generated from.
        key: Hash of the campaign's settings, the version, the adapter and the base (the folder's suffix).
        output_dir: The campaign's folder.
        counts: Images per setting.
        mlflow_run_id: The MLflow ``campaign`` run.
        reused: True when this version and these settings had been generated before (nothing was generated).
        generated: Images made by this call (0 when reused).
        reason: Why it ran ("schedule", "champion changed: v2 -> v3 (promote)", ...).
        created: When the campaign was completed (UTC, ISO 8601).
    """

    brand: str
    campaign: str
    version: str
    key: str
    output_dir: Path
    counts: dict[str, int]
    mlflow_run_id: str
    reused: bool = False
    generated: int = 0
    reason: str = ""
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def gallery(self) -> Path:
        return self.output_dir / "index.html"

    @property
    def manifest(self) -> Path:
        return self.output_dir / "manifest.json"

    @property
    def images(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line for logs and artifacts."""
        done = (
            f"already generated on {self.created[:10]}"
            if self.reused
            else f"{self.generated} images generated"
        )
        return f"campaign {self.campaign} of {self.brand} from version {self.version}: {done}, in {self.output_dir}"


def campaign_root(brand: str, name: str, settings: Settings) -> Path:
    """The folder that holds every run of one standard campaign."""
    return settings.home / "campaigns" / brand / name


def campaign_key(campaign: CampaignSpec, adapter: FetchedAdapter, placement: Placement | None = None) -> str:
    """Twelve hex digits naming what decides a campaign's images: its settings, the version, adapter and base, and
    the device and dtype they are sampled with (``None``: cpu/float32, which leaves the key what it was before
    they were recorded, so campaigns generated then are still found)."""
    decided_by: dict[str, Any] = {
        "campaign": campaign.model_dump(mode="json"),
        "version": adapter.version.version,
        "adapter_sha256": adapter.sha256,
        "base_model": adapter.base_model,
        "base_revision": adapter.base_revision,
    }
    if placement is not None and not placement.legacy:
        decided_by.update(device=placement.device, dtype=placement.dtype)
    return sha256_bytes(canonical_json(decided_by).encode())[:12]


def run_campaign(
    brand: str,
    name: str,
    *,
    model: str = "champion",
    reason: str = "on demand",
    batch_size: int | None = None,
    device: DeviceName = "auto",
    dtype: DtypeName = "auto",
    settings: Settings | None = None,
    progress: bool = False,
) -> CampaignRun:
    """Generate standard campaign ``name`` of ``brand`` from ``model``, unless that version already made it.

    Args:
        brand: Brand slug.
        name: A campaign listed under ``campaigns:`` in the brand's brand.yaml.
        model: An alias (champion, candidate) or a version number; it is resolved once, to one version.
        reason: Why it runs, recorded on the MLflow run and in ``campaign.json``.
        batch_size: Images per pipeline call; None: GenerateConfig's default.
        device: Where to sample (``auto``: a CUDA GPU when one is visible); part of the campaign's key.
        dtype: Weight dtype (``auto``: bf16 or fp16 on a GPU, float32 on the CPU); part of the campaign's key.
        settings: Home and tracking URI; read from the environment when omitted.
        progress: Show a progress bar.

    Raises:
        ConfigError: unknown brand or campaign, or ``device: cuda`` without a visible CUDA GPU.
        GenerationError: the model cannot be resolved (e.g. no @champion yet), or another process is generating
            the same campaign from the same version right now.
    """
    from brandtune.generation import generate
    from brandtune.registry import fetch, model_uri

    placement = resolve_placement(device, dtype)  # before anything is fetched, loaded or written
    settings = settings or Settings.from_env()
    spec = load_brand(brand)
    campaign = spec.campaign(name)
    adapter = fetch(model_uri(spec.name, model.lstrip("@")), settings=settings)
    key = campaign_key(campaign, adapter, placement)
    root = campaign_root(spec.name, name, settings)
    done = find_completed(root, key)
    if done is not None:
        logger.info("%s", done.summary())
        return CampaignRun(**{**asdict(done), "reused": True, "generated": 0})
    version = adapter.version.version
    folder = _folder_for(root, key, version)
    with _exclusive(folder, spec.name, name, version):
        run: dict[str, Any] = {"device": placement.device, "dtype": placement.dtype}
        run.update({"batch_size": batch_size} if batch_size else {})
        config = campaign.generate_config(spec.name, version, output_dir=folder, **run)
        result = generate(config, settings, progress=progress)
        counts = dict(sorted(Counter(e["setting"] for e in _manifest_images(result.manifest)).items()))
        run_id = _log_run(spec, campaign, adapter, folder, counts, reason, settings, placement)
        record = CampaignRun(
            spec.name, name, version, key, folder, counts, run_id, generated=result.generated, reason=reason
        )
        atomic_write_json(folder / RECORD, {**asdict(record), "output_dir": str(folder)})
    logger.info("%s", record.summary())
    return record


def find_completed(root: Path, key: str) -> CampaignRun | None:
    """The completed run of a campaign with ``key`` under ``root`` (None: never completed).

    Only folders named ``*-<key>`` whose ``campaign.json`` is a complete record of that key count; anything else
    under ``root`` (an interrupted run, a folder a person copied in) is ignored here.
    """
    if not root.is_dir():
        return None
    for folder in sorted(root.glob(f"*-{key}"), reverse=True):
        record = _read_record(folder / RECORD)
        if record is not None and record.key == key:
            return CampaignRun(**{**asdict(record), "output_dir": folder})
    return None


def _read_record(path: Path) -> CampaignRun | None:
    """A ``campaign.json`` as a :class:`CampaignRun`; None (with a warning) when it is not a complete one."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        counts = {str(k): int(v) for k, v in data["counts"].items()}
        return CampaignRun(
            brand=str(data["brand"]),
            campaign=str(data["campaign"]),
            version=str(data["version"]),
            key=str(data["key"]),
            output_dir=path.parent,
            counts=counts,
            mlflow_run_id=str(data["mlflow_run_id"]),
            generated=int(data.get("generated", 0)),
            reason=str(data.get("reason", "")),
            created=str(data["created"]),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        logger.warning(
            "ignoring %s: not a complete campaign record (%s); the campaign is generated again", path, exc
        )
        return None


def _folder_for(root: Path, key: str, version: str) -> Path:
    """The folder of an interrupted run with this key (to resume it), else a new one dated today."""
    unfinished = sorted(p for p in root.glob(f"*-{key}") if p.is_dir()) if root.is_dir() else []
    if unfinished:
        logger.info("resuming the interrupted campaign run in %s", unfinished[-1])
        return unfinished[-1]
    return root / f"{datetime.now(UTC).strftime('%Y-%m-%d')}-v{version}-{key}"


@contextmanager
def _exclusive(folder: Path, brand: str, name: str, version: str) -> Iterator[None]:
    """Hold the campaign folder's lock: a second run of the same campaign and version fails at once."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder.parent / f".{folder.name}.lock"  # beside the folder: not one of the campaign's artifacts
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GenerationError(
                f"campaign {name} of {brand} from version {version} is being generated by another run right now "
                f"(lock {lock}); wait for it to finish"
            ) from None
        yield
    finally:
        os.close(fd)


def _manifest_images(manifest: Path) -> list[dict[str, Any]]:
    return list(json.loads(manifest.read_text(encoding="utf-8")).get("images", []))


def _log_run(
    spec: BrandSpec,
    campaign: CampaignSpec,
    adapter: FetchedAdapter,
    folder: Path,
    counts: dict[str, int],
    reason: str,
    settings: Settings,
    placement: Placement,
) -> str:
    """Log the campaign as an MLflow run linked to the model version it used (its parameters with the device and
    dtype it was sampled with); return the run id."""
    from brandtune.provenance import brandtune_version, flow_run_id
    from brandtune.tracking import RunTracker, flat_params

    version = adapter.version
    tracker = RunTracker.start(
        spec.name,
        settings.tracking_uri,
        None,
        f"campaign-{campaign.name}-v{version.version}",
        flush_every=1000,
        system_metrics=False,
    )
    params = campaign.model_dump(mode="json", exclude={"sampler"})
    params.update(campaign.sampler.model_dump(mode="json", exclude_none=True))
    params.update(device=placement.device, dtype=placement.dtype)
    tracker.log_params(flat_params(params))
    tags = {
        "brandtune.stage": "campaign",
        "brandtune.brand": spec.name,
        "brandtune.campaign": campaign.name,
        "brandtune.model_name": version.name,
        "brandtune.model_version": version.version,
        "brandtune.adapter_sha256": adapter.sha256,
        "brandtune.reason": reason,
        "brandtune.version": brandtune_version(),
    }
    if flow_run := flow_run_id():
        tags["prefect.flow_run_id"] = flow_run
    try:
        _log_contents(tracker, tags, folder, counts, version.source)
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    return tracker.run_id


def _log_contents(
    tracker: Any, tags: dict[str, str], folder: Path, counts: dict[str, int], source: str
) -> None:
    from mlflow.entities import LoggedModelInput

    tracker.set_tags(tags)
    tracker.log_metrics({"images": float(sum(counts.values()))}, step=0)
    tracker.log_metrics({f"images.{setting}": float(n) for setting, n in counts.items()}, step=0)
    tracker.log_artifact(folder, "campaign")
    if source.startswith("models:/"):  # the version's logged model: MLflow shows the run under that model
        tracker.client.log_inputs(tracker.run_id, models=[LoggedModelInput(source.removeprefix("models:/"))])
