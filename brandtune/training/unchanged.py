"""Nothing to train: a training whose identity a registered version already has.

A training's identity is its run hash (dataset fingerprint + resolved config + base and revision + resolution,
:func:`~brandtune.training.plan.run_identity`); every registered version carries the hash it was trained with as
the lineage tag ``brandtune.config_hash``. When a new training would have the hash of an existing version it would
make that version again, so the launcher (CLI, flow) says so and trains nothing, unless it is forced. The check
resolves the job only (no model weights) and asks the registry one query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from brandtune.registry import RegisteredVersion
    from brandtune.settings import Settings
    from brandtune.training.plan import TrainJob


@dataclass(frozen=True)
class Unchanged:
    """The registered version a training would remake.

    Attributes:
        version: That version (with its aliases and tags).
        config_hash: The identity both share.
    """

    version: RegisteredVersion
    config_hash: str

    def message(self, force_hint: str = "--force / force=true") -> str:
        """One line: which version, and how to train anew anyway."""
        v = self.version
        return (
            f"{v.name} v{v.version} was trained on exactly this dataset and config; nothing to train "
            f"(use {force_hint} to train anew)"
        )


def find_unchanged(job: TrainJob, settings: Settings, *, flow_run_id: str | None = None) -> Unchanged | None:
    """The newest registered version trained with ``job``'s identity, if any.

    A version registered by ``flow_run_id`` itself does not count: that is this flow run, retried after it had
    trained and registered, and it carries on with its own result.

    Raises:
        RegistryError: the tracking server stayed unreachable.
    """
    from brandtune.registry import versions_with_config_hash

    found = versions_with_config_hash(job.brand.name, job.run_hash, settings=settings)
    if flow_run_id and any(v.tags.get("prefect.flow_run_id") == flow_run_id for v in found):
        return None
    return Unchanged(found[0], job.run_hash) if found else None
