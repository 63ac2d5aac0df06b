"""`tf-minilm` command line: argument parsing and dispatch only.

Owns: the command table and the process-level set-up (logging, allocator). Imports: the
command modules by name, when a command runs: `tf_minilm.commands`, `export.cli`,
`serving.cli_serve`, `serving.cli_bench`.

Each subcommand lives in its own module exposing `HELP`, `add_arguments(parser)` and
`run(args) -> int`. Those modules import nothing heavy at import time, so
`tf-minilm serve` never loads TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

COMMANDS: dict[str, str] = {
    "prepare": "tf_minilm.commands.prepare",
    "distill": "tf_minilm.commands.distill",
    "export": "export.cli",
    "serve": "serving.cli_serve",
    "bench": "serving.cli_bench",
    "evaluate": "tf_minilm.commands.evaluate",
}


def build_parser() -> argparse.ArgumentParser:
    """Parser with one subparser per command in `COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="tf-minilm",
        description="MiniLM / MiniLMv2 distillation, ONNX export and serving for BERT-family encoders.",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging verbosity (default: %(default)s)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(
            name,
            help=module.HELP,
            description=module.HELP,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tf-minilm` console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    # The command line as given (model cards quote it).
    args.command_line = ["tf-minilm", *(sys.argv[1:] if argv is None else argv)]
    # TensorFlow's default CPU allocator maps every large temporary afresh (the MiniLMv2
    # relation tensors are ~100 MB a batch) and pays page faults on each touch; the BFC
    # allocator reuses them. It is read once when TensorFlow starts, so set it here, before
    # any command imports TensorFlow; an explicit setting in the environment wins. A
    # command that must give memory back instead (export) sets its own.
    if not getattr(args._module, "RETURNS_TENSORFLOW_MEMORY", False):
        os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        logging.getLogger("tf_minilm").error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
