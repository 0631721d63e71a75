"""Shared fixtures: every test session gets its own BRANDTUNE_HOME, PREFECT_HOME and MLflow store."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from threads import THREADS

# Keep libraries quiet and local before anything imports them.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# torch's default thread count in this process and in every process a test starts: the worker's share
os.environ["OMP_NUM_THREADS"] = str(THREADS)

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def brandtune_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh BRANDTUNE_HOME for the whole test session (builtin model builds are cached there)."""
    home = tmp_path_factory.mktemp("brandtune_home")
    old = {k: os.environ.get(k) for k in ("BRANDTUNE_HOME", "MLFLOW_TRACKING_URI", "PREFECT_HOME")}
    os.environ["BRANDTUNE_HOME"] = str(home)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
    os.environ["PREFECT_HOME"] = str(home / "prefect")
    yield home
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules marked slow first, each kept whole and in file order: pytest-xdist hands out whole modules
    (``--dist loadfile``) in this order, so the longest start first and no worker is left with one at the end."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


@pytest.fixture(autouse=True)
def _no_debug() -> Iterator[None]:
    """`--debug` sets BRANDTUNE_DEBUG in the process: each test starts and leaves without it, so that no CLI
    subprocess a later test starts shows a traceback instead of its one-line error. (monkeypatch.delenv of an unset
    variable records nothing to undo, so it would not remove what the test set.)"""
    os.environ.pop("BRANDTUNE_DEBUG", None)
    yield
    os.environ.pop("BRANDTUNE_DEBUG", None)


@pytest.fixture(scope="session")
def torch_threads() -> None:
    """Pin torch to the worker's share of the cores so results do not depend on the machine's load."""
    import torch

    torch.set_num_threads(THREADS)


@pytest.fixture(scope="session")
def acme_dataset(brandtune_home: Path) -> Path:
    """The sample brand's photos ingested once per session into the session's BRANDTUNE_HOME."""
    from brandtune.config import load_brand
    from brandtune.ingest import ingest

    brand = load_brand(REPO_ROOT / "data" / "brands" / "acme")
    return ingest(brand, REPO_ROOT / "data" / "brands" / "acme" / "photos", progress=False).path


@pytest.fixture(scope="session", autouse=True)
def _brands_dir() -> None:
    """Brand slugs resolve against the repo's data/brands wherever pytest is started from."""
    os.environ.setdefault("BRANDTUNE_BRANDS_DIR", str(REPO_ROOT / "data" / "brands"))


@pytest.fixture(scope="module", autouse=True)
def mlflow_store(brandtune_home: Path, request: pytest.FixtureRequest) -> str:
    """A fresh MLflow sqlite store per test module: one module's registered versions and aliases (a champion
    promoted by a flow test, say) never leak into another module's expectations."""
    import sys

    # the whole dotted name: tests/cli/test_registry.py ("tests.cli.test_registry") and
    # tests/registry/test_registry.py ("tests.registry.test_registry") differ
    uri = f"sqlite:///{brandtune_home / 'mlflow' / (request.module.__name__.replace('.', '-') + '.db')}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    if "mlflow" in sys.modules:  # the process-wide default of code that asks mlflow itself
        sys.modules["mlflow"].set_tracking_uri(uri)
    yield uri
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module: bit-identical reruns, and several times faster than two on a busy 2-core
    machine (no spinning); the previous count comes back after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def trained_versions(
    brandtune_home: Path, acme_dataset: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[str]]:
    """Two adapter versions of acme, trained on ``acme_dataset`` and registered once per session into a store of
    their own.

    Returns that store's sqlite file and the version numbers; tests ask for ``versions``, which copies the store.
    """
    import sys

    db = brandtune_home / "mlflow" / "session-versions.db"
    uri = f"sqlite:///{db}"
    db.parent.mkdir(parents=True, exist_ok=True)
    module_uri = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(uri)
    try:
        from brandtune.registry import register
        from brandtune.training import TrainConfig
        from brandtune.training.run import train

        out = tmp_path_factory.mktemp("gen-train")
        made = []
        for seed in (1, 2):
            cfg = TrainConfig(
                brand="acme",
                max_train_steps=4,
                learning_rate=1e-2,
                seed=seed,
                checkpointing_steps=0,
                validation_inference_steps=2,
                num_threads=THREADS,
                output_dir=out / f"run{seed}",
            )
            made.append(register("acme", train(cfg).mlflow_run_id).version)
    finally:
        if module_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = module_uri
        if "mlflow" in sys.modules:
            sys.modules["mlflow"].set_tracking_uri(module_uri)
    return db, made


@pytest.fixture(scope="module")
def versions(trained_versions: tuple[Path, list[str]], mlflow_store: str) -> list[str]:
    """Two registered adapter versions of acme (the newer one is @candidate), in this module's MLflow store.

    The store starts as a copy of ``trained_versions``' store: each module that asks (tests/test_generation.py,
    tests/evaluation/test_job.py) finds exactly the two versions it would have trained itself, and what it moves
    (an alias, a tag) stays in its own store, while the training runs once per session.
    """
    import sqlite3
    from contextlib import closing

    source, made = trained_versions
    target = Path(mlflow_store.removeprefix("sqlite:///"))
    if target.exists():
        raise RuntimeError(
            f"{target} exists already: ask for `versions` before anything opens the module's store"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)
    return made
