"""brandtune.training.launch.ProgressLines: a child's tqdm refreshes are throttled, everything else passes."""

from __future__ import annotations

from brandtune.training.launch import ProgressLines


def test_progress_bar_refreshes_are_throttled_in_either_unit() -> None:
    shown: list[str] = []
    lines = ProgressLines(shown.append, every=3600.0)
    lines("INFO brandtune.training.run: new training in /tmp/run: starting from step 0")
    lines("train:   0%|          | 0/300 [00:00<?, ?step/s]")
    lines("train:   0%|          | 1/300 [00:24<2:03:12, 24.72s/step, loss=0.2258]")  # slow: s/step
    lines("train:  30%|###       | 90/300 [00:09<00:21, 9.80step/s, loss=0.1900]")  # fast: step/s
    lines(
        "train:  40%|####      | 120/300 [00:12<00:18, 9.90step/s, loss=0.1800]\rtrain:  41%|####  | 123/300 [00:12<00:18, 9.9step/s]"
    )
    lines("   ")
    lines("train: 100%|##########| 300/300 [00:30<00:00, 9.90step/s, loss=0.1700]")
    lines("WARNING brandtune.training.loop: loss is NaN at step 12")
    assert shown == [
        "INFO brandtune.training.run: new training in /tmp/run: starting from step 0",
        "train:   0%|          | 0/300 [00:00<?, ?step/s]",  # the first refresh shows
        "train: 100%|##########| 300/300 [00:30<00:00, 9.90step/s, loss=0.1700]",  # a finished bar always does
        "WARNING brandtune.training.loop: loss is NaN at step 12",
    ]


def test_progress_bar_shows_again_after_the_interval() -> None:
    shown: list[str] = []
    lines = ProgressLines(shown.append, every=0.0)
    for step in range(3):
        lines(f"train:   {step}%|   | {step}/300 [00:0{step}<00:10, 9.9step/s]")
    assert len(shown) == 3
