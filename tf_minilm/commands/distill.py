"""`tf-minilm distill`: flags generated from `DistillConfig`, work done by `tf_minilm.distill.job`.

Owns: the distill command's argument parsing (one flag per `DistillConfig` field) and
its printed summary. Imports: `distill.config`, `distill.job`, `model.config`,
`data.corpus`, and for the exit code of a failed run `distill.callbacks`,
`distill.runtime`, `distill.state`, `distill.trainer`, `hf.errors`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from typing import Any

from tf_minilm.distill.config import DistillConfig
from tf_minilm.model.config import ConfigError

HELP = ("distil a teacher into a MiniLM/MiniLMv2 student (no flags: the embedded default "
        "teacher and corpus)")

logger = logging.getLogger("tf_minilm.distill")


def _flag_type(kind: str) -> Any:
    if kind.startswith("int"):
        return int
    if kind.startswith("float"):
        return float  # finiteness is DistillConfig's rule (flags and config files alike)
    return str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per `DistillConfig` field; defaults shown in --help, applied in `run`."""
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="YAML or JSON file with the same keys as these flags; flags given "
                             "on the command line win")
    defaults = DistillConfig()
    for field in dataclasses.fields(DistillConfig):
        flag = "--" + field.name.replace("_", "-")
        help_text = field.metadata["help"]
        default = getattr(defaults, field.name)
        shown = " ".join(default) if isinstance(default, list) else default
        if str(field.type).startswith("bool"):
            parser.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=help_text)
            continue
        if default not in (None, []):
            help_text = f"{help_text} (default: {shown})"
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text}
        if field.metadata.get("choices"):
            kwargs["choices"] = field.metadata["choices"]
        if field.metadata.get("nargs"):
            kwargs["nargs"] = field.metadata["nargs"]
        parser.add_argument(flag, type=_flag_type(str(field.type)), **kwargs)
    # argparse's default formatter would print "(default: ==SUPPRESS==)"; ours is in the text.
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def config_from_args(args: argparse.Namespace) -> DistillConfig:
    """Defaults < --config file < explicit flags."""
    values: dict[str, Any] = {}
    source = "command line"
    if getattr(args, "config", None):
        values.update(DistillConfig.from_file(args.config))
        source = f"--config {args.config}"
    names = set(DistillConfig.field_names())
    explicit = {key: value for key, value in vars(args).items() if key in names}
    values.update(explicit)
    return DistillConfig.from_mapping(values, source)


def _exit_code(err: Exception) -> int | None:
    """2 for bad input (one line, nothing trained), 1 for a run that stopped with its state
    saved, None for a bug (a traceback). Imported here: a bad flag never loads TensorFlow."""
    from tf_minilm.data.corpus import CorpusError

    if isinstance(err, ConfigError | CorpusError):
        return 2
    from tf_minilm.distill.callbacks import NonFiniteLossError
    from tf_minilm.distill.runtime import StrategyError
    from tf_minilm.distill.state import TrainingCheckpointError
    from tf_minilm.distill.trainer import DataExhaustedError
    from tf_minilm.hf.errors import CheckpointError

    if isinstance(err, CheckpointError | TrainingCheckpointError | StrategyError):
        return 2
    if isinstance(err, NonFiniteLossError | DataExhaustedError):
        return 1
    return None


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
        from tf_minilm.distill import job

        summary = job.run(config, command=getattr(args, "command_line", None))
    except Exception as err:
        code = _exit_code(err)
        if code is None:
            raise
        logger.error("%s", err)
        return code
    evaluation = summary.get("eval") or {}
    fidelity = {where: {key: value for key, value in values.items()
                        if key in ("spearman", "cka", "knn@10", "skipped")}
                for where, values in (summary.get("fidelity") or {}).items()}
    print(json.dumps({"output": config.output, "step": summary["step"],
                      "eval_loss": evaluation.get("loss"),
                      "student_parameters": summary["student_parameters"],
                      "fidelity": fidelity}, indent=2))
    return 0
