"""``python -m brandtune.cli``: the same as the ``brandtune`` console script."""

from brandtune.cli.app import run

run()
