"""The ``brandtune`` command line: thin commands that parse flags, call the library and report.

One module per command group: :mod:`~brandtune.cli.ingest`, :mod:`~brandtune.cli.train`,
:mod:`~brandtune.cli.evaluate`, :mod:`~brandtune.cli.generate`, :mod:`~brandtune.cli.registry` (register,
promote, rollback, models, pull), :mod:`~brandtune.cli.base` (the ``base`` group), :mod:`~brandtune.cli.ui`
(``ui``, ``mlflow-ui``) and :mod:`~brandtune.cli.demo`. Each adds its commands to the app with
``add_commands(app)``; :mod:`~brandtune.cli.app` assembles them, and what they share is in
:mod:`~brandtune.cli._common`. The library never imports this package.
"""

from __future__ import annotations

from brandtune.cli.app import app, parse_command_line, run

__all__ = ["app", "parse_command_line", "run"]
