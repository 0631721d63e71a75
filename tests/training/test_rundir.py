"""Run folders: a new one per invocation; a checkpoint is continued only by a retry of its invocation or when asked.

The checkpoints here are real (:func:`brandtune.training.checkpoint.write_checkpoint`, with a sha256 marker) but
tiny; only the last test trains (twice, 3 steps, end to end). Jobs are resolved from the sample brand's dataset and
builtin:tiny.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from training_helpers import QUICK

from brandtune.errors import TrainingError
from brandtune.settings import Settings
from brandtune.training import TrainConfig, train
from brandtune.training import checkpoint as ckpt
from brandtune.training.plan import TrainJob, resolve_job
from brandtune.training.rundir import (
    RESULT_FILE,
    RunChoice,
    choose_run_dir,
    claim,
    read_run_file,
    write_result,
)

pytestmark = pytest.mark.usefixtures("acme_dataset")


@pytest.fixture
def settings(tmp_path: Path, brandtune_home: Path) -> Settings:
    """This test's own BRANDTUNE_HOME (so its run folders are its own), seeing the session's datasets."""
    session = Settings.from_env()
    home = tmp_path / "home"
    home.mkdir()
    (home / "datasets").symlink_to(session.datasets_dir, target_is_directory=True)
    return session.model_copy(update={"home": home})


@pytest.fixture
def make(settings: Settings):
    """``make(invocation, **fields)``: a resolved job of the sample brand."""

    def _make(invocation: str | None, **fields: object) -> TrainJob:
        cfg = TrainConfig(brand="acme", max_train_steps=8, invocation_id=invocation, **fields)
        return resolve_job(cfg, settings)

    return _make


@pytest.fixture
def start(settings: Settings):
    """What the launcher does: choose, then (holding the lock) claim."""

    def _start(j: TrainJob) -> RunChoice:
        choice = choose_run_dir(j, settings)
        claim(choice, j)
        return choice

    return _start


def checkpoint(run_dir: Path, j: TrainJob, step: int, config_hash: str | None = None) -> Path:
    import torch

    return ckpt.write_checkpoint(
        run_dir / "checkpoints",
        step,
        {"0/w": torch.zeros(2)},
        {"state": {}, "param_groups": []},
        {},
        {
            "config_hash": config_hash or j.run_hash,
            "mlflow_run_id": "run-x",
            "invocation_id": j.config.invocation_id,
        },
        {0: ckpt.rng_state()},
        keep=3,
    )


def finish(run_dir: Path) -> None:
    (run_dir / RESULT_FILE).write_text("{}")


def test_every_invocation_gets_a_new_folder_and_continues_nothing(make, start) -> None:
    first = start(make("flow-a"))
    checkpoint(first.run_dir, make("flow-a"), 4)
    second = start(make("flow-b"))
    third = start(make(None))
    names = [c.run_dir.name for c in (first, second, third)]
    h = make(None).run_hash
    assert names == [f"{h}-1", f"{h}-2", f"{h}-3"]
    assert second.resume_from is None and third.resume_from is None
    assert read_run_file(second.run_dir)["invocation_id"] == "flow-b"
    assert [p.name for p in (first.run_dir / "checkpoints").iterdir()] == ["checkpoint-00000004"]


def test_a_retry_goes_back_into_its_own_folder(make, start) -> None:
    first = start(make("flow-a"))
    start(make("flow-b"))
    assert start(make("flow-a")) == RunChoice(first.run_dir, None, "retry", note="retry of invocation flow-a")
    written = checkpoint(first.run_dir, make("flow-a"), 4)
    retry = start(make("flow-a"))
    assert (retry.run_dir, retry.resume_from, retry.why) == (first.run_dir, written, "retry")
    finish(first.run_dir)
    assert start(make("flow-a")).finished, "a retry of a finished training gets its result back"


def test_resume_latest_takes_the_newest_unfinished_run(make, start) -> None:
    old = start(make("a"))
    old_ckpt = checkpoint(old.run_dir, make("a"), 2)
    newer = start(make("b"))
    checkpoint(newer.run_dir, make("b"), 6)
    finish(newer.run_dir)  # finished: nothing to resume there
    asked = start(make("c", resume="latest"))
    assert (asked.run_dir, asked.resume_from, asked.why) == (old.run_dir, old_ckpt, "resume")
    assert read_run_file(old.run_dir)["invocation_id"] == "c", "the resuming invocation now owns the run"
    finish(old.run_dir)
    none_left = start(make("d", resume="latest"))
    assert none_left.why == "new" and none_left.resume_from is None
    line = none_left.describe()
    assert "resume=latest: no complete checkpoint" in line and "starting from step 0" in line


def test_resume_path_continues_that_run_or_says_why_not(make, start, tmp_path: Path) -> None:
    run = start(make("a"))
    first = checkpoint(run.run_dir, make("a"), 2)
    second = checkpoint(run.run_dir, make("a"), 4)
    by_checkpoint = start(make("b", resume=str(first)))
    assert (by_checkpoint.run_dir, by_checkpoint.resume_from) == (run.run_dir, first)
    by_run_folder = start(make("b", resume=str(run.run_dir)))
    assert by_run_folder.resume_from == second
    with pytest.raises(TrainingError, match="another config"):
        start(make("b", resume=str(first), learning_rate=0.123))
    with pytest.raises(TrainingError, match="not output_dir"):
        start(make("b", resume=str(first), output_dir=tmp_path / "elsewhere"))
    (second / "trainable.safetensors").write_bytes(b"broken")
    with pytest.raises(TrainingError, match="broken"):
        start(make("b", resume=str(second)))
    finish(run.run_dir)
    with pytest.raises(TrainingError, match="finished"):
        start(make("b", resume=str(first)))
    with pytest.raises(ValueError, match="neither 'latest' nor an existing folder"):
        TrainConfig(brand="acme", resume=str(tmp_path / "nope"))


def test_explicit_output_dir_refuses_unfinished_work_and_clears_finished(
    make, start, settings: Settings, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    mine = start(make("a", output_dir=out))
    assert mine.run_dir == out and mine.why == "new"
    checkpoint(out, make("a"), 2)
    assert start(make("a", output_dir=out)).resume_from is not None, "a retry continues its own checkpoint"
    with pytest.raises(TrainingError, match="unfinished training"):
        choose_run_dir(make("b", output_dir=out), settings)
    finish(out)
    fresh = choose_run_dir(make("b", output_dir=out), settings)
    assert fresh.clear and (out / "checkpoints").is_dir(), "nothing is cleared before the folder is claimed"
    claim(fresh, make("b", output_dir=out))
    assert not (out / "checkpoints").exists() and not (out / RESULT_FILE).exists()
    assert read_run_file(out)["invocation_id"] == "b"


def test_the_launchers_choice_reaches_the_child_as_is(make, start) -> None:
    choice = start(make("a"))
    again = RunChoice.from_json(choice.to_json())
    assert again == dataclasses.replace(choice, clear=False)


def test_a_retry_of_a_finished_training_gets_its_result_back_validated(make, start, settings) -> None:
    """No child starts: the launcher returns the finished run's result.json as a TrainResult, or says clearly that
    the file is not one."""
    from brandtune.training import TrainResult, launch

    job = make("flow-a")
    first = start(job)
    result = TrainResult(
        run_dir=first.run_dir,
        adapter_dir=first.run_dir / "adapter",
        mlflow_run_id="run-x",
        steps=8,
        final_loss=0.5,
        cache_hit=False,
        config_hash=job.run_hash,
        invocation_id="flow-a",
    )
    write_result(first.run_dir, result)
    lines: list[str] = []
    assert launch(job.config, on_line=lines.append, settings=settings, job=job) == result
    assert lines == [
        f"retry of invocation flow-a: its training in {first.run_dir} had finished; returning that result"
    ]
    finish(first.run_dir)  # an empty object: a finished folder whose result is no result
    with pytest.raises(
        TrainingError, match=r"finished training in .*result\.json is not a valid training result"
    ):
        launch(job.config, on_line=lines.append, settings=settings, job=job)


@pytest.mark.usefixtures("torch_threads")
def test_a_new_training_never_continues_an_earlier_one(tmp_path: Path) -> None:
    """The same config twice: two run folders, two MLflow runs; the first run's folder, checkpoints, metrics and
    tags stay as they were."""
    import mlflow

    cfg = TrainConfig(**{**QUICK, "max_train_steps": 3, "checkpointing_steps": 1, "seed": 11})
    first = train(cfg)
    client = mlflow.MlflowClient()
    before = client.get_run(first.mlflow_run_id)
    losses = client.get_metric_history(first.mlflow_run_id, "loss")
    checkpoints = sorted(p.name for p in (first.run_dir / "checkpoints").iterdir())
    second = train(cfg)
    assert second.run_dir != first.run_dir and second.mlflow_run_id != first.mlflow_run_id
    assert second.run_dir.parent == first.run_dir.parent and second.config_hash == first.config_hash
    assert second.resumed_from == 0
    after = client.get_run(first.mlflow_run_id)
    assert after.data.tags == before.data.tags and after.info.end_time == before.info.end_time
    assert len(client.get_metric_history(first.mlflow_run_id, "loss")) == len(losses) == 3
    assert sorted(p.name for p in (first.run_dir / "checkpoints").iterdir()) == checkpoints
