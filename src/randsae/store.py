"""The content-addressed artifact store.

Layout::

    <root>/<stage>/<key>/            a finished artifact (its files + meta.json)
    <root>/.partial/<stage>/<key>/   work in progress: kept across attempts so a killed job
                                     can resume; never looks finished
    <root>/.locks/<stage>-<key>.lock one builder per key at a time (fcntl lock)

Publication is atomic: a job writes into the partial directory, then meta.json (with sizes
and sha256 checksums of every file), then renames the directory into place. A crashed job
leaves nothing at the final path. Two processes building the same key serialise on the
lock; the second finds the artifact finished and does nothing.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import randsae

META = "meta.json"
log = logging.getLogger("randsae")
PARTIAL = ".partial"
# Bookkeeping files that workflow managers drop into output directories; not content.
IGNORED = frozenset({META, ".snakemake_timestamp"})
LOCKS = ".locks"


class StoreError(RuntimeError):
    pass


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def file_manifest(root: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {size, sha256}} for every file under root except meta.json."""
    out: dict[str, dict[str, Any]] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.relative_to(root).as_posix() not in IGNORED:
            out[p.relative_to(root).as_posix()] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    return out


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def code_version() -> str:
    """Package version, plus the git commit when running from a checkout."""
    version = randsae.__version__
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(randsae.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version}+g{commit}" if commit else version


@dataclass
class Building:
    """Handle given to a stage while it builds: where to write, and whether it must."""

    workdir: Path  # write the artifact's files here (may hold a previous attempt's work)
    done: bool  # True: another process already published this key; write nothing
    extra_meta: dict[str, Any]  # stage-specific facts to record in meta.json


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # ------------------------------------------------------------------ paths
    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def partial_path(self, stage: str, key: str) -> Path:
        return self.root / PARTIAL / stage / key

    def exists(self, stage: str, key: str) -> bool:
        return (self.path(stage, key) / META).is_file()

    def link(self, link: str | Path) -> Path:
        """Point ``link`` (a path ending in ``<stage>/<key>``, e.g. a workflow's
        ``.randsae/links/sae/<key>``) at that published artifact, atomically (a temporary
        symlink renamed over the old one). The target is absolute, so the link works from
        anywhere. Raises FileNotFoundError if the artifact is not published."""
        link = Path(link)
        stage, key = link.parent.name, link.name
        if not self.exists(stage, key):
            raise FileNotFoundError(f"cannot link {link}: artifact {stage}/{key} is not in the store {self.root}")
        target = self.path(stage, key).resolve()
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".{key}.{os.getpid()}.link")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target, target_is_directory=True)
        os.replace(tmp, link)
        return target

    def meta(self, stage: str, key: str) -> dict[str, Any]:
        with open(self.path(stage, key) / META) as f:
            return json.load(f)

    # ------------------------------------------------------------- publishing
    @contextlib.contextmanager
    def _lock(self, stage: str, key: str) -> Iterator[None]:
        lockdir = self.root / LOCKS
        lockdir.mkdir(parents=True, exist_ok=True)
        with open(lockdir / f"{stage}-{key}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def publish(self, spec: dict[str, Any]) -> Iterator[Building]:
        """Build the artifact described by a plan spec (see Artifact.spec) atomically.

        Yields a Building; if ``done`` is set the artifact already exists and the caller
        must skip its work. On normal exit meta.json is written and the work directory is
        renamed into place; on an exception nothing is published and the partial work is
        kept for the next attempt.
        """
        stage, key = spec["stage"], spec["key"]
        final = self.path(stage, key)
        with self._lock(stage, key):
            if self.exists(stage, key):
                yield Building(workdir=final, done=True, extra_meta={})
                return
            work = self.partial_path(stage, key)
            work.mkdir(parents=True, exist_ok=True)
            (work / META).unlink(missing_ok=True)
            building = Building(workdir=work, done=False, extra_meta={})
            yield building
            self._finish(spec, work, final, building.extra_meta)

    def _finish(self, spec: dict[str, Any], work: Path, final: Path, extra: dict[str, Any]) -> None:
        files = file_manifest(work)
        meta = {
            "stage": spec["stage"],
            "version": spec["version"],
            "key": spec["key"],
            "name": spec["name"],
            "params": spec["params"],
            "inputs": spec["inputs"],
            "code_version": code_version(),
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "total_bytes": sum(f["size"] for f in files.values()),
            "files": files,
            **({"info": extra} if extra else {}),
        }
        tmp = work / (META + ".tmp")
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, work / META)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # an empty leftover (e.g. made by a workflow manager)
            shutil.rmtree(final)
        os.replace(work, final)
        _fsync_dir(final.parent)
        log.info("published %s (%s/%s)", spec["name"], spec["stage"], spec["key"])

    # ------------------------------------------------------------- inspecting
    def iter_meta(self, stage: str | None = None) -> Iterator[dict[str, Any]]:
        if not self.root.is_dir():
            return
        stages = [stage] if stage else sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        for s in stages:
            sdir = self.root / s
            if not sdir.is_dir():
                continue
            for d in sorted(sdir.iterdir()):
                m = d / META
                if m.is_file():
                    with open(m) as f:
                        yield json.load(f)

    def verify(self) -> list[str]:
        """Problems found: files missing, extra, resized or with a changed checksum; artifact
        directories without meta.json. Empty list = clean."""
        problems: list[str] = []
        if not self.root.is_dir():
            return problems
        for sdir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for d in sorted(sdir.iterdir()):
                rel = f"{sdir.name}/{d.name}"
                if not (d / META).is_file():
                    problems.append(f"{rel}: no meta.json (incomplete artifact)")
                    continue
                meta = json.loads((d / META).read_text())
                expected = meta.get("files", {})
                actual = file_manifest(d)
                for path in sorted(set(expected) - set(actual)):
                    problems.append(f"{rel}/{path}: missing")
                for path in sorted(set(actual) - set(expected)):
                    problems.append(f"{rel}/{path}: not in meta.json")
                for path in sorted(set(expected) & set(actual)):
                    if expected[path] != actual[path]:
                        problems.append(f"{rel}/{path}: checksum or size mismatch")
        return problems

    def gc(self, keep: set[str], dry_run: bool = False) -> list[Path]:
        """Remove artifacts (and partial work and locks) whose key is not in ``keep``."""
        doomed: list[Path] = []
        if not self.root.is_dir():
            return doomed
        # stage directories and partial work; other dot-directories (the LLM response cache)
        # are shared by every config and kept
        stage_dirs = [p for p in self.root.iterdir() if p.is_dir() and (not p.name.startswith(".") or p.name == PARTIAL)]
        for sdir in sorted(stage_dirs):
            parents = sorted(sdir.iterdir()) if sdir.name == PARTIAL else [sdir]
            for parent in parents:
                if not parent.is_dir():
                    continue
                doomed += [d for d in sorted(parent.iterdir()) if d.name not in keep]
        locks = self.root / LOCKS
        if locks.is_dir():
            doomed += [p for p in sorted(locks.iterdir()) if p.stem.rsplit("-", 1)[-1] not in keep]
        if not dry_run:
            for p in doomed:
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink(missing_ok=True)
        return doomed
