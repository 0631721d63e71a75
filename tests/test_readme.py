"""The README cannot lie: its ``brandtune`` command lines parse with the real CLI, and its Python snippet runs.

Command lines are parsed by the app's own click parser down the sub-command chain (nothing runs). How README
notation is read:

- ```` ```bash ```` blocks: every line that starts with ``brandtune`` or ``.../brandtune`` is a full command line;
  a trailing ``\\`` continues it on the next line; ``# ...`` is a comment.
- inline code spans that start with ``brandtune ``: command lines too, except that a span of command names
  only (``brandtune train`` in a sentence) is a mention, for which the commands must exist.
- ``[--flag value]`` is optional: every combination, with and without each, must parse.
- ``<description>`` is a value to fill in: it becomes ``1`` (valid for text, numbers and paths alike).
"""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from brandtune.cli import parse_command_line

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
PROGRAM = re.compile(r"^(?:\$\s+)?(?:\S*/)?brandtune(?:\s|$)")  # brandtune, .venv/bin/brandtune, $ brandtune
OPTIONAL = re.compile(r"\[(-[^\[\]]*)\]")  # [--source photos.zip]
PLACEHOLDER = re.compile(r"<[^<>]+>")  # <mlflow run id printed by train>


def readme_commands(text: str) -> list[tuple[str, bool]]:
    """Every ``brandtune`` command line of a README as ``(line, inline)``; see the module docstring."""
    found: list[tuple[str, bool]] = []
    for lang, body in FENCE.findall(text):
        if lang not in ("", "bash", "sh", "shell", "console"):
            continue
        for line in re.sub(r"\\\n\s*", " ", body).splitlines():
            if PROGRAM.match(line.strip()):
                found.append((line.strip(), False))
    prose = FENCE.sub("", text)
    for span in re.findall(r"`([^`\n]+)`", prose):
        if PROGRAM.match(span.strip()):
            found.append((span.strip(), True))
    return found


def _argv(line: str) -> list[str]:
    """The arguments after the program name, with comments dropped and placeholders filled in."""
    words = shlex.split(PLACEHOLDER.sub("1", line), comments=True)
    return words[2:] if words[0] == "$" else words[1:]


def variants(line: str) -> list[str]:
    """The line with each ``[--optional part]`` left out and put in, in every combination."""
    parts = OPTIONAL.split(line)  # text, optional, text, optional, ..., text
    texts, optionals = parts[0::2], parts[1::2]
    out = []
    for chosen in itertools.product((False, True), repeat=len(optionals)):
        pieces = [texts[0]]
        for keep, opt, text in zip(chosen, optionals, texts[1:], strict=True):
            pieces.extend([opt if keep else "", text])
        out.append("".join(pieces))
    return out


def check(line: str, inline: bool) -> list[str]:
    """The problems of one README command line (empty: it parses)."""
    import typer

    problems = []
    for variant in variants(line):
        argv = _argv(variant)
        try:
            parse_command_line(argv)
        except typer.TyperException as exc:
            mention = inline and parse_command_line(argv, resilient=True).command_path.split()[1:] == argv
            if not mention:
                problems.append(f"{variant!r}: {' '.join(exc.format_message().split())}")
    return problems


def test_every_readme_command_line_parses() -> None:
    commands = readme_commands(README.read_text(encoding="utf-8"))
    full = [line for line, inline in commands if not inline]
    named = {_argv(line)[0] for line in full}
    # the README's stage-by-stage block alone has seven; finding fewer means the reader above went blind
    assert len(full) >= 7 and {"ingest", "train", "register", "generate", "promote"} <= named, commands
    problems = [p for line, inline in commands for p in check(line, inline)]
    assert not problems, "README command lines the CLI rejects:\n" + "\n".join(problems)


def test_the_checker_rejects_what_the_cli_rejects() -> None:
    text = """
```bash
.venv/bin/brandtune generate --brand b --prompt p \\
        --settings beach "in a snowy cabin" --stepz 3
brandtune register --brand b            # --run is missing
brandtune ingest --brand b [--sourc photos.zip]
brandtune promote b --version <a number>
```
and `brandtune trian`, `brandtune models list` or `brandtune pull acme --alias champion`.
"""
    commands = readme_commands(text)
    assert [inline for _, inline in commands] == [False, False, False, False, True, True, True]
    assert variants("x [--a 1] y [--b]") == ["x  y ", "x  y --b", "x --a 1 y ", "x --a 1 y --b"]
    results = {line.split()[1]: check(line, inline) for line, inline in commands}
    assert "No such option: --stepz" in results["generate"][0]
    assert "Missing option '--run'" in results["register"][0]
    assert len(results["ingest"]) == 1 and "--sourc" in results["ingest"][0]  # only the variant with it
    assert results["promote"] == []  # <a number> is filled with 1
    assert results["trian"] == ["'brandtune trian': No such command 'trian'. Did you mean 'train'?"]
    assert results["models"] == []  # a mention of an existing command
    assert "Missing option '--dest'" in results["pull"][0]


def _python_snippet(text: str, marker: str) -> str:
    blocks = [body for lang, body in FENCE.findall(text) if lang == "python" and marker in body]
    assert len(blocks) == 1, f"expected one ```python block with {marker}, found {len(blocks)}"
    return blocks[0]


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory, acme_dataset: Path, one_torch_thread: None) -> Any:
    """A small real release of acme in this module's MLflow store: train 2 steps, register, promote."""
    from brandtune.registry import promote, register
    from brandtune.training import TrainConfig
    from brandtune.training.run import train

    cfg = TrainConfig(
        brand="acme",
        max_train_steps=2,
        train_batch_size=2,
        learning_rate=1e-2,
        checkpointing_steps=0,
        validation_inference_steps=2,
        num_threads=1,
        output_dir=tmp_path_factory.mktemp("readme-train") / "run",
    )
    version = register("acme", train(cfg).mlflow_run_id)
    promote("acme", version.version)
    return version


def test_readme_downstream_snippet_runs_as_printed(released: Any) -> None:
    from PIL import Image

    from brandtune.registry import adapter_name

    code = _python_snippet(
        README.read_text(encoding="utf-8"), 'brandtune.load_pipeline("models:/acme-lora@champion")'
    )
    namespace: dict[str, object] = {}
    exec(compile(code, f"{README}:python snippet", "exec"), namespace)
    image, pipe = namespace["image"], namespace["pipe"]
    assert isinstance(image, Image.Image) and min(image.size) >= 32
    assert pipe.get_active_adapters() == [adapter_name(released)]  # the champion's adapter, loaded
