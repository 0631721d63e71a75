"""Process-wide settings read from the environment.

Nothing here touches the disk: :meth:`Settings.from_env` only reads variables, and the directories it names are
created by the code that writes into them.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from brandtune.errors import ConfigError

DEFAULT_HOME = ".brandtune"
UI_USER_ENV = "BRANDTUNE_UI_USER"
UI_PASSWORD_ENV = "BRANDTUNE_UI_PASSWORD"
MIN_UI_PASSWORD = 12  # MLflow's basic-auth refuses shorter admin passwords


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


class UiAuth(BaseModel):
    """The one user and password of the local Prefect and MLflow servers on a shared host (``brandtune ui
    --auth``). Read from the environment only: brandtune never writes the password to a file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    username: str = Field(
        default="admin",
        min_length=1,
        pattern=r"^[A-Za-z0-9._@-]+$",
        description="User name of the MLflow admin and of Prefect's basic auth. Env: BRANDTUNE_UI_USER.",
    )
    password: SecretStr = Field(
        description=f"The password (at least {MIN_UI_PASSWORD} characters). Env: BRANDTUNE_UI_PASSWORD."
    )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> UiAuth:
        """Credentials from ``BRANDTUNE_UI_USER`` (default ``admin``) and ``BRANDTUNE_UI_PASSWORD``.

        Raises:
            ConfigError: the password is missing or too short, or the user name has characters basic auth cannot
                carry (one line, saying what to set).
        """
        env = os.environ if environ is None else environ
        password = env.get(UI_PASSWORD_ENV, "")
        if len(password) < MIN_UI_PASSWORD:
            what = "is not set" if not password else f"has {len(password)} characters"
            raise ConfigError(
                f"--auth needs a password: {UI_PASSWORD_ENV} {what}; export {UI_PASSWORD_ENV} with at least "
                f"{MIN_UI_PASSWORD} characters (from a password manager, never a file in the repo) and retry"
            )
        username = env.get(UI_USER_ENV) or "admin"
        try:
            return cls(username=username, password=SecretStr(password))
        except ValueError as exc:
            raise ConfigError(
                f"{UI_USER_ENV}={username!r} is not a usable user name: use letters, digits and . _ @ - only"
            ) from exc

    @property
    def basic(self) -> str:
        """``user:password``, the form of Prefect's auth string and of HTTP basic credentials."""
        return f"{self.username}:{self.password.get_secret_value()}"

    def client_env(self) -> dict[str, str]:
        """What MLflow and Prefect clients (brandtune commands, the worker, deploys) read their credentials from."""
        return {
            "MLFLOW_TRACKING_USERNAME": self.username,
            "MLFLOW_TRACKING_PASSWORD": self.password.get_secret_value(),
            "PREFECT_API_AUTH_STRING": self.basic,
        }
