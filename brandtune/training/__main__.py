"""``python -m brandtune.training --config FILE``: one training process (also under ``accelerate launch``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from brandtune.config import TrainConfig, load_yaml_model
from brandtune.errors import BrandtuneError

DEBUG_IMPORTS_ENV = "BRANDTUNE_DEBUG_IMPORTS"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m brandtune.training", description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="TrainConfig as YAML or JSON.")
    parser.add_argument(
        "--resume",
        default=None,
        metavar="latest|PATH",
        help="Continue a training: 'latest' (the newest unfinished run of this config) or a checkpoint/run folder.",
    )
    parser.add_argument("--result-file", type=Path, default=None, help="Write the result as JSON here.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from brandtune.forwarder import MODE_ENV

    os.environ.setdefault(MODE_ENV, "sidecar")  # no launcher forwards this training's run log: a sidecar does
    try:
        config = load_yaml_model(TrainConfig, args.config, {"resume": args.resume})
        from brandtune.training.run import train

        result = train(config)
    except BrandtuneError as exc:
        logging.getLogger("brandtune.training").error("%s", exc)
        return 2
    logging.getLogger("brandtune.training").info("adapter: %s", result.adapter_dir)
    if args.result_file is not None and os.environ.get("RANK", "0") == "0":
        from brandtune.training.result import write_result_file

        write_result_file(args.result_file, result)
    if os.environ.get(DEBUG_IMPORTS_ENV):  # tests: the training process never imports mlflow
        logging.getLogger("brandtune.training").info("mlflow imported: %s", "mlflow" in sys.modules)
    return 0


if __name__ == "__main__":
    sys.exit(main())
