"""Process-wide settings read from the environment.

Nothing here touches the disk: :meth:`Settings.from_env` only reads variables, and the directories it names are
created by the code that writes into them.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_HOME = ".brandtune"


class Settings(BaseModel):
    """Where brandtune keeps its state and which MLflow server it talks to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    home: Path = Field(
        default=Path(DEFAULT_HOME),
        description="Root of brandtune's local state (datasets, caches, runs). Env: BRANDTUNE_HOME.",
    )
    tracking_uri: str = Field(
        default="",
        description="MLflow tracking and registry URI. Env: MLFLOW_TRACKING_URI. "
        "Empty means sqlite:///<home>/mlflow.db.",
    )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Build settings from ``BRANDTUNE_HOME`` and ``MLFLOW_TRACKING_URI`` (or the given mapping)."""
        env = os.environ if environ is None else environ
        home = Path(env.get("BRANDTUNE_HOME") or DEFAULT_HOME).expanduser().absolute()
        uri = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"
        return cls(home=home, tracking_uri=uri)

    @property
    def datasets_dir(self) -> Path:
        """Root of the content-addressed datasets: ``<home>/datasets/<brand>/<fingerprint>``."""
        return self.home / "datasets"

    @property
    def models_dir(self) -> Path:
        """Root of materialised base models (``builtin:*`` builds, exported copies)."""
        return self.home / "models"

    @property
    def cache_dir(self) -> Path:
        """Root of derived caches (latents, text embeddings, downloaded adapters)."""
        return self.home / "cache"

    @property
    def artifacts_dir(self) -> Path:
        """Default artifact root for the local MLflow store."""
        return self.home / "mlartifacts"
