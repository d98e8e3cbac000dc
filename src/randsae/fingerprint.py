"""Content fingerprints of input files (a local model directory, a GGUF file, corpus files).

A key that held an input's path would reuse artifacts built from other bytes at that path
(another working directory, a file edited in place) and rebuild for the same bytes at another
path. Keys hold these fingerprints instead (randsae.inputs writes them into the config).

- A file: ``sha256:<hex>`` of its bytes.
- A directory (a model at one revision): the sha256 of every regular file directly in it
  (sorted by name; name and digest both count, since ``config.json`` and ``model.safetensors``
  play different roles). Subdirectories are left out: they hold other revisions
  (``step0/``) or download bookkeeping (``.cache/``), which ``from_pretrained`` on this
  directory never reads.
- An ordered list of files (a corpus): the digests in the given order, without names (the
  documents depend on the bytes and their order, not on what the files are called).

Hashing a large model takes a while, so digests are memoised in a JSON file (the store's
``.fingerprints.json``) keyed by resolved path, size and modification time (ns): a file is
hashed again only when one of them changes. A file modified in the last
``FRESH_SECONDS`` is hashed but not memoised, since an edit within the same timestamp tick
would leave size and mtime unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from randsae.store import sha256_file

log = logging.getLogger("randsae")

CACHE_NAME = ".fingerprints.json"
FRESH_SECONDS = 2.0
PREFIX = "sha256:"


class FingerprintCache:
    """File digests by (resolved path, size, mtime_ns), read from and saved to ``path``
    (None: memoise in this process only). ``make_parent`` creates the folder of ``path`` when
    it does not exist yet (default: mkdir; the plan passes the store's ``create``)."""

    def __init__(self, path: Path | None = None, make_parent: Callable[[], None] | None = None):
        self.path = path
        self._make_parent = make_parent
        self._entries: dict[str, dict[str, Any]] = _read(path) if path is not None else {}
        self._new: dict[str, dict[str, Any]] = {}

    def digest(self, file: Path) -> str:
        """Hex sha256 of ``file``'s bytes, hashed only when size or mtime changed."""
        real = file.resolve()
        st = real.stat()
        hit = self._new.get(str(real)) or self._entries.get(str(real))
        if isinstance(hit, dict) and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
            return str(hit["sha256"])
        if st.st_size > 100_000_000:
            log.info("fingerprinting %s (%.1f GB); memoised in %s", real, st.st_size / 1e9, self.path)
        digest = sha256_file(real)
        if time.time_ns() - st.st_mtime_ns > FRESH_SECONDS * 1e9:
            self._new[str(real)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        return digest

    def save(self) -> None:
        """Write new digests (merged with what other processes wrote meanwhile), atomically."""
        if self.path is None or not self._new:
            return
        merged = {**_read(self.path), **self._new}
        if not self.path.parent.is_dir():
            if self._make_parent is not None:
                self._make_parent()
            self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(merged, indent=0, sort_keys=True))
        os.replace(tmp, self.path)
        self._entries, self._new = merged, {}


def _read(path: Path) -> dict[str, dict[str, Any]]:
    """The memo file's entries; a missing or unreadable one is an empty memo (it is a cache)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _combine(parts: Iterable[str]) -> str:
    return PREFIX + hashlib.sha256("\n".join(parts).encode()).hexdigest()


def file_fingerprint(file: Path, cache: FingerprintCache) -> str:
    """The fingerprint of one file (``sha256:`` + the sha256 of its bytes)."""
    return PREFIX + cache.digest(file)


def files_fingerprint(files: Iterable[Path], cache: FingerprintCache) -> str:
    """The fingerprint of an ordered list of files: their digests in order, names left out."""
    return _combine(cache.digest(f) for f in files)


def dir_fingerprint(directory: Path, cache: FingerprintCache) -> str:
    """The fingerprint of the regular files directly in ``directory`` (names and digests)."""
    files = sorted(p for p in directory.iterdir() if p.is_file())
    return _combine(f"{p.name}\0{cache.digest(p)}" for p in files)
