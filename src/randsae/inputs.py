"""Pinning a config's local inputs to their contents: the I/O step before the plan.

``local`` and ``gguf`` model sources and a ``files`` corpus name files by path. Keys must
cover what those files hold, not what they are called (randsae issue 15), so
:func:`pin_inputs` reads them once per config: it resolves each path against the working
directory (like ``store`` and ``results``), checks that it exists, and writes the absolute
path and a content fingerprint (:mod:`randsae.fingerprint`) into the config:

- ``models.<m>.source.path`` absolute, ``models.<m>.source.fingerprint`` of the directory at
  the source's revision (kind local) or of the GGUF file;
- ``models.<m>.step0_fingerprint`` of the ``step0_revision`` subdirectory (kind local);
- ``corpus.source.paths`` absolute, ``corpus.source.fingerprint`` of the files in order.

Packaged and hub sources are left exactly as they are (their keys do not change). The plan
stays a pure function of the pinned config. A stage puts a pinned source into its params
without the path (:func:`split_location`): the key holds the fingerprint, so the same bytes
under another path give the same key and other bytes under the same path a different one;
the path travels in the artifact's labels (``location``), which no key covers.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from randsae.config import Config, ConfigError
from randsae.fingerprint import (
    CACHE_NAME,
    FingerprintCache,
    dir_fingerprint,
    file_fingerprint,
    files_fingerprint,
)
from randsae.store import Store

#: Source fields that say where the bytes are, not what they are: left out of keys once the
#: source carries a fingerprint.
LOCATION_FIELDS = ("path", "paths")


class Pinned(NamedTuple):
    cfg: Config  # the config with absolute paths and fingerprints written in
    problems: list[str]  # one line per missing or unreadable input, with its key path


def local_revision_dir(root: Path, revision: str | None) -> Path:
    """The directory a local source loads at ``revision``: the subdirectory ``root/revision``;
    ``root`` itself for no revision, or for ``main`` when ``root/main`` does not exist."""
    path = root / revision if revision else root
    if revision == "main" and not path.is_dir():
        path = root
    return path


def fingerprint_cache(cfg: Mapping[str, Any], base: Path | None = None) -> FingerprintCache:
    """The memo of file digests: ``<store>/.fingerprints.json`` (the store is shared by every
    working directory that uses it, so a large model is hashed once). A store that does not
    exist yet is created (marked) to hold it; a folder there that is not a store gets nothing
    written into it (the digests are memoised in this process only)."""
    root = (base or Path.cwd()) / cfg["store"]
    store = Store(root)
    if root.exists() and not store.is_store():
        return FingerprintCache(None)
    return FingerprintCache(root / CACHE_NAME, make_parent=store.create)


def split_location(source: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what a key covers, where the bytes are) of a source. A pinned source (one with a
    ``fingerprint``) keeps its fingerprint and loses its path(s); any other is keyed whole."""
    if source.get("fingerprint") is None:
        return dict(source), {}
    keyed = {k: v for k, v in source.items() if k not in LOCATION_FIELDS}
    return keyed, {k: source[k] for k in LOCATION_FIELDS if k in source}


def pin(cfg: Config, *, base: Path | None = None, cache: FingerprintCache | None = None) -> Pinned:
    """The config with its local inputs resolved and fingerprinted, and the problems found
    (does not touch the input; see the module docs)."""
    base = base or Path.cwd()
    cache = cache if cache is not None else fingerprint_cache(cfg, base)
    out = copy.deepcopy(cfg)
    problems: list[str] = []
    for name, m in out["models"].items():
        problems += _pin_model(name, m, base, cache)
    problems += _pin_corpus(out["corpus"]["source"], base, cache)
    cache.save()
    return Pinned(out, problems)


def pin_inputs(cfg: Config, *, base: Path | None = None, cache: FingerprintCache | None = None) -> Config:
    """:func:`pin`, raising ConfigError that lists every missing or unreadable input."""
    pinned = pin(cfg, base=base, cache=cache)
    if pinned.problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(pinned.problems))
    return pinned.cfg


def _pin_model(name: str, m: dict[str, Any], base: Path, cache: FingerprintCache) -> list[str]:
    src = m["source"]
    where = f"models.{name}.source"
    if src["kind"] not in ("local", "gguf"):
        return []
    src.pop("fingerprint", None)  # never keep a value these files did not give
    m.pop("step0_fingerprint", None)
    path = (base / src["path"]).resolve()
    src["path"] = str(path)
    try:
        if src["kind"] == "gguf":
            if path.is_dir():
                return [f"{where}.path: {path} is a directory; kind gguf takes a .gguf file (a Hub-like directory is kind local)"]
            if not path.is_file():
                return [f"{where}.path: GGUF file {path} does not exist"]
            src["fingerprint"] = file_fingerprint(path, cache)
            return []
        if path.is_file():
            return [f"{where}.path: {path} is a file; kind local takes a directory laid out like a Hub repository "
                    f"(a .gguf file is kind gguf)"]
        if not path.is_dir():
            return [f"{where}.path: local model directory {path} does not exist"]
        problems = []
        for field, revision in (("source", src.get("revision")), ("step0_revision", m.get("step0_revision"))):
            if field == "step0_revision" and revision is None:
                continue
            d = local_revision_dir(path, revision)
            if not (d / "config.json").is_file():
                rev = f"revision {revision!r}" if revision else "no revision"
                problems.append(f"models.{name}.{field}: {d} has no config.json ({rev}; a local source is a directory "
                                f"laid out like a Hub repository, with revision R in the subdirectory R/)")
            elif field == "source":
                src["fingerprint"] = dir_fingerprint(d, cache)
            else:
                m["step0_fingerprint"] = dir_fingerprint(d, cache)
        return problems
    except OSError as e:
        return [f"{where}.path: cannot read {e.filename or path}: {e.strerror or e}"]


def _pin_corpus(src: dict[str, Any], base: Path, cache: FingerprintCache) -> list[str]:
    if src["kind"] != "files":
        return []
    src.pop("fingerprint", None)
    paths = [(base / p).resolve() for p in src["paths"]]
    src["paths"] = [str(p) for p in paths]
    problems = []
    for i, p in enumerate(paths):
        if p.is_dir():
            problems.append(f"corpus.source.paths[{i}]: {p} is a directory; list the files in it (paths takes files)")
        elif not p.is_file():
            problems.append(f"corpus.source.paths[{i}]: file {p} does not exist")
    if problems:
        return problems
    try:
        src["fingerprint"] = files_fingerprint(paths, cache)
    except OSError as e:
        return [f"corpus.source.paths: cannot read {e.filename}: {e.strerror or e}"]
    return []
