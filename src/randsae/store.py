"""The content-addressed artifact store.

Layout::

    <root>/<stage>/<key>/            a finished artifact (its files + meta.json)
    <root>/.partial/<stage>/<key>/   work in progress: kept across attempts so a killed job
                                     can resume; never looks finished
    <root>/.locks/<stage>-<key>.lock one builder per key at a time (fcntl lock)
    <root>/.randsae-store            the marker: this folder is a store (format version)
    <root>/.removing/                artifacts being deleted (renamed here first, so a
                                     removal is atomic: an artifact is whole or gone)

Publication is atomic: a job writes into the partial directory, then meta.json (with sizes
and sha256 checksums of every file), then renames the directory into place. A crashed job
leaves nothing at the final path. Two processes building the same key serialise on the
lock; the second finds the artifact finished and does nothing.

Safety (docs/store.md, "What randsae promises"): ls, verify, gc and rm refuse a folder
without the marker; gc and rm only ever touch ``<stage>/<key>`` directories of known stages
(and their partial work and locks); a job checks each input against its meta.json
(:meth:`Store.check`) before it reads it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import randsae
from randsae.errors import RandsaeError

META = "meta.json"
log = logging.getLogger("randsae")
PARTIAL = ".partial"
# Bookkeeping files that workflow managers drop into output directories; not content.
IGNORED = frozenset({META, ".snakemake_timestamp"})
LOCKS = ".locks"
MARKER = ".randsae-store"
MARKER_FORMAT = 1
REMOVING = ".removing"
KEY_RE = re.compile(r"[0-9a-f]{20}")  # randsae.plan.artifact_key: 20 hex digits


class StoreError(RandsaeError, RuntimeError):
    pass


class NotAStore(StoreError):
    """The folder is missing or has no store marker: refused before anything is read or removed."""


class DamagedArtifact(StoreError):
    """A published artifact no longer matches its meta.json (or has none)."""


@dataclass(frozen=True)
class InputCheck:
    """How a job checks an input artifact before it reads it (:meth:`Store.check`).

    Every file listed in meta.json must be there with its recorded size. An artifact of at
    most ``full_hash_max_bytes`` in all is then checked completely (every file's sha256, as
    ``randsae store verify`` does). In a larger one (activation caches, latent caches, big
    models), each file of at most ``2 * ends_bytes`` is hashed whole and each larger file is
    checked by the sha256 of its first and last ``ends_bytes`` (recorded at publication as
    ``files[...].ends``): truncation, a zeroed or rewritten head or tail and a swapped file
    are caught, a flipped byte in the middle of a large file only by ``store verify``.
    """

    full_hash_max_bytes: int = 1 << 30
    ends_bytes: int = 1 << 20


def rebuild_hint(store: Store, stage: str, key: str) -> str:
    """The one command that removes a damaged artifact and everything built from it."""
    return (f"remove it and everything built from it with `randsae store rm {stage}/{key} --store {store.root.resolve()}`, "
            "then rerun the pipeline to rebuild them")


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def sha256_ends(path: Path, size: int, nbytes: int) -> str:
    """sha256 of a file's first and last ``nbytes`` (size > 2 * nbytes: they do not overlap)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(nbytes))
        f.seek(size - nbytes)
        h.update(f.read(nbytes))
    return h.hexdigest()


#: The temporary file zarr's LocalStore writes a chunk to before renaming it into place
#: (``<chunk>.<uuid4 hex>.partial``): one left behind is a write a kill interrupted.
_ZARR_TEMPORARY = re.compile(r"\.[0-9a-f]{32}\.partial$")


def remove_dead_temporaries(root: Path) -> list[str]:
    """Delete the chunk temporaries a killed zarr write left under ``root`` (the resumed work
    rewrote those chunks; the temporaries were never part of the artifact) and return their
    paths, so a published artifact holds only its own files."""
    dead = [p for p in root.rglob("*.partial") if p.is_file() and _ZARR_TEMPORARY.search(p.name)]
    for p in dead:
        p.unlink()
    return [p.relative_to(root).as_posix() for p in dead]


def file_manifest(root: Path, ends_bytes: int = InputCheck.ends_bytes) -> dict[str, dict[str, Any]]:
    """{relative path: {size, sha256[, ends]}} for every file under root except meta.json.
    Files larger than ``2 * ends_bytes`` also get ``ends: {bytes, sha256}``, the fingerprint
    the input check of a large artifact compares (InputCheck)."""
    out: dict[str, dict[str, Any]] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.relative_to(root).as_posix() not in IGNORED:
            size = p.stat().st_size
            entry: dict[str, Any] = {"size": size, "sha256": sha256_file(p)}
            if size > 2 * ends_bytes:
                entry["ends"] = {"bytes": ends_bytes, "sha256": sha256_ends(p, size, ends_bytes)}
            out[p.relative_to(root).as_posix()] = entry
    return out


def known_stages() -> tuple[str, ...]:
    """The stage names of this code (imported lazily: randsae.stages imports this module)."""
    from randsae.stages import stage_defs

    return tuple(stage_defs())


def is_randsae_meta(meta: Any, stage: str, key: str) -> bool:
    """A meta.json randsae wrote for ``<stage>/<key>`` (not some other tool's meta.json)."""
    return isinstance(meta, dict) and meta.get("stage") == stage and meta.get("key") == key and isinstance(meta.get("files"), dict)


def _read_json(path: Path) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


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
    def __init__(self, root: str | Path, check: InputCheck = InputCheck()):
        self.root = Path(root)
        self.input_check = check
        # artifacts this process has checked, with the stat signature they had then: a job
        # that reads one input for several artifacts (a group) hashes it once
        self._checked: dict[tuple[str, str], tuple[tuple[int, ...], ...]] = {}

    # ------------------------------------------------------------------ marker
    @property
    def marker(self) -> Path:
        return self.root / MARKER

    def is_store(self) -> bool:
        return self.marker.is_file()

    def create(self) -> None:
        """Make ``root`` a store: write the marker unless it is there. Publishing calls this,
        so a store is marked from its first artifact on; ``randsae store init`` calls it to
        adopt a store made before markers existed."""
        if self.marker.is_file():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        body = {"randsae_store": MARKER_FORMAT, "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "code_version": randsae.__version__}
        tmp = self.root / f"{MARKER}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
        try:
            os.link(tmp, self.marker)  # never replaces a marker another process wrote first
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links: an atomic rename will do
            os.replace(tmp, self.marker)
        finally:
            tmp.unlink(missing_ok=True)

    def require(self) -> None:
        """Raise NotAStore unless ``root`` is a store made by a compatible randsae: the
        commands that read or remove in bulk refuse anything else (a typo in ``--store``)."""
        if not self.root.is_dir():
            raise NotAStore(f"no store at {self.root}: the folder does not exist (check --store or the config's `store:`)")
        if not self.marker.is_file():
            adoptable = any(True for _ in self._published())
            hint = (f"it holds randsae artifacts, so it is probably a store made before stores were marked: "
                    f"adopt it once with `randsae store init --store {self.root}`" if adoptable else
                    "check --store or the config's `store:`; a store is marked when its first artifact is published")
            raise NotAStore(f"{self.root} is not a randsae store (no {MARKER} marker); {hint}")
        body = _read_json(self.marker)
        fmt = body.get("randsae_store") if isinstance(body, dict) else None
        if not isinstance(fmt, int):
            raise NotAStore(f"{self.marker} is not a randsae store marker (unreadable or foreign content)")
        if fmt > MARKER_FORMAT:
            raise NotAStore(f"{self.root} is a store of format {fmt}; this randsae reads format {MARKER_FORMAT}: upgrade randsae")

    # ------------------------------------------------------------------ paths
    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def partial_path(self, stage: str, key: str) -> Path:
        return self.root / PARTIAL / stage / key

    def exists(self, stage: str, key: str) -> bool:
        """Published: the directory holds a meta.json (a directory without one is broken, never done)."""
        return (self.path(stage, key) / META).is_file()

    def _artifact_dirs(self, stage: str | None = None) -> Iterator[tuple[str, str, Path]]:
        """(stage, key, dir) of every ``<root>/<stage>/<key>`` directory of a known stage whose
        name is a key: nothing else under the root is ever an artifact (``store: .`` may share
        its folder with data/, logs/, ...)."""
        if not self.root.is_dir():
            return
        for s in [stage] if stage else known_stages():
            sdir = self.root / s
            if not sdir.is_dir():
                continue
            for d in sorted(sdir.iterdir()):
                if KEY_RE.fullmatch(d.name) and d.is_dir() and not d.is_symlink():
                    yield s, d.name, d

    def _published(self, stage: str | None = None) -> Iterator[tuple[Path, dict[str, Any]]]:
        """(dir, meta) of every artifact directory holding randsae's meta.json for it."""
        for s, key, d in self._artifact_dirs(stage):
            meta = _read_json(d / META)
            if is_randsae_meta(meta, s, key):
                yield d, meta

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
        self.create()
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
        dead = remove_dead_temporaries(work)
        if dead:
            log.info("%s: removed %d chunk temporaries of an interrupted write (%s)", spec["name"], len(dead),
                     ", ".join(dead[:3]))
        files = file_manifest(work, self.input_check.ends_bytes)
        meta = {
            "stage": spec["stage"],
            "version": spec["version"],
            "key": spec["key"],
            "name": spec["name"],
            "params": spec["params"],
            "labels": spec.get("labels", {}),
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
        if final.exists():  # a leftover without meta.json (an empty directory, a broken artifact)
            self._discard(final)
        os.replace(work, final)
        _fsync_dir(final.parent)
        log.info("published %s (%s/%s)", spec["name"], spec["stage"], spec["key"])

    # ------------------------------------------------------------- inspecting
    def iter_meta(self, stage: str | None = None) -> Iterator[dict[str, Any]]:
        """meta.json of every published artifact (of ``stage``), known stages only."""
        for _, meta in self._published(stage):
            yield meta

    def verify(self) -> list[str]:
        """Problems found: files missing, extra, resized or with a changed checksum; artifact
        directories without (a readable) meta.json. Empty list = clean. Raises NotAStore for
        a missing folder or one without the marker."""
        self.require()
        problems: list[str] = []
        for stage, key, d in self._artifact_dirs():
            rel = f"{stage}/{key}"
            meta = _read_json(d / META) if (d / META).is_file() else None
            if meta is None:
                problems.append(f"{rel}: no meta.json (incomplete or damaged artifact; "
                                f"`randsae store rm {rel} --store {self.root}` removes it and what was built from it)")
                continue
            if not is_randsae_meta(meta, stage, key):
                problems.append(f"{rel}: meta.json is not this artifact's (stage/key differ or no file list)")
                continue
            expected = meta["files"]
            actual = file_manifest(d, self.input_check.ends_bytes)
            for path in sorted(set(expected) - set(actual)):
                problems.append(f"{rel}/{path}: missing")
            for path in sorted(set(actual) - set(expected)):
                problems.append(f"{rel}/{path}: not in meta.json")
            for path in sorted(set(expected) & set(actual)):
                want, got = expected[path], actual[path]
                if (want.get("size"), want.get("sha256")) != (got["size"], got["sha256"]):
                    problems.append(f"{rel}/{path}: checksum or size mismatch")
        return problems

    # ------------------------------------------------------------ input check
    def _signature(self, d: Path, files: Iterable[str]) -> tuple[tuple[int, ...], ...] | None:
        sig = []
        for rel in (META, *files):
            try:
                st = (d / rel).stat()
            except OSError:
                return None
            sig.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        return tuple(sig)

    def check(self, stage: str, key: str, reader: str = "") -> dict[str, Any]:
        """Check a published artifact against its meta.json before a job reads it (the rule
        is :class:`InputCheck`); return the meta. Raises FileNotFoundError if there is no
        such directory, DamagedArtifact (naming ``reader``, the artifact, the file and the
        command that removes it so the next run rebuilds it) if it does not match."""
        d = self.path(stage, key)
        ref = f"{stage}/{key}"
        prefix = f"{reader}: " if reader else ""
        if not d.is_dir():
            raise FileNotFoundError(f"artifact {ref} is not in the store at {self.root}")

        def damaged(name: str, what: str) -> DamagedArtifact:
            self._checked.pop((stage, key), None)
            which = ref if name == ref else f"{name} ({ref})"
            return DamagedArtifact(f"{prefix}artifact {which} in the store {self.root} is damaged: {what}; "
                                   f"{rebuild_hint(self, stage, key)}")

        if not (d / META).is_file():
            raise damaged(ref, "its directory has no meta.json (publication never finished there, or meta.json was deleted)")
        meta = _read_json(d / META)
        if not is_randsae_meta(meta, stage, key):
            raise damaged(ref, "its meta.json is unreadable or not this artifact's")
        name, files = meta.get("name", ref), meta["files"]
        sig = self._signature(d, files)
        if sig is not None and self._checked.get((stage, key)) == sig:
            return meta  # checked by this process and not touched since
        full = sum(int(f.get("size", 0)) for f in files.values()) <= self.input_check.full_hash_max_bytes
        for rel in sorted(files):
            want, p = files[rel], d / rel
            try:
                size = p.stat().st_size
            except OSError:
                raise damaged(name, f"file {rel} is missing") from None
            if size != want.get("size"):
                raise damaged(name, f"file {rel} has {size} bytes, meta.json records {want.get('size')}")
            ends = want.get("ends")
            if full or size <= 2 * self.input_check.ends_bytes:
                if sha256_file(p) != want.get("sha256"):
                    raise damaged(name, f"file {rel} does not match its sha256 in meta.json (its content changed after publication)")
            elif isinstance(ends, dict) and sha256_ends(p, size, int(ends["bytes"])) != ends.get("sha256"):
                raise damaged(name, f"file {rel}: its first or last {int(ends['bytes'])} bytes changed after publication")
            # else a large file whose ends match, or one published before ends were recorded (size only)
        if sig is not None:
            self._checked[(stage, key)] = sig
        return meta

    # ---------------------------------------------------------------- removing
    def _discard(self, d: Path) -> None:
        """Delete an artifact directory atomically: rename it under .removing/ (it is gone
        from its path at once, whole), then delete it there."""
        trash = self.root / REMOVING
        trash.mkdir(parents=True, exist_ok=True)
        dest = trash / f"{d.parent.name}-{d.name}-{os.getpid()}"
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(d, dest)
        shutil.rmtree(dest)

    def dependents(self, refs: Iterable[str], edges: Mapping[str, Iterable[str]] | None = None) -> list[str]:
        """``refs`` ("stage/key") and every artifact built from them, transitively, dependents
        first. What reads what comes from the store's meta.json files (every published
        artifact, of any config) and ``edges`` (consumer ref -> its input refs, e.g. a
        config's plan, which also covers artifacts whose meta.json is gone)."""
        consumers: dict[str, set[str]] = {}
        for meta in self.iter_meta():
            for up in meta.get("inputs", {}).values():
                consumers.setdefault(up, set()).add(f"{meta['stage']}/{meta['key']}")
        for consumer, ups in (edges or {}).items():
            for up in ups:
                consumers.setdefault(up, set()).add(consumer)
        depth: dict[str, int] = {}
        frontier = sorted(set(refs))
        level = 0
        while frontier:
            for r in frontier:
                depth[r] = level
            level += 1
            # a ref seen again further down moves down (it is removed before its inputs)
            frontier = sorted({c for r in frontier for c in consumers.get(r, ()) if c != r and depth.get(c, -1) < level})
            if level > len(consumers) + len(depth) + 1:
                raise StoreError("artifact inputs form a cycle")
        return sorted(depth, key=lambda r: (-depth[r], r))

    def remove(self, ref: str) -> bool:
        """Remove the artifact ``stage/key`` (published or broken) under its lock, so the next
        run rebuilds it. True if there was something to remove."""
        stage, key = _split_ref(ref)
        with self._lock(stage, key):
            d = self.path(stage, key)
            if not d.is_dir():
                return False
            self._discard(d)
            self._checked.pop((stage, key), None)
            return True

    def gc(self, keep: set[str], dry_run: bool = False) -> list[Path]:
        """Remove artifacts (and partial work and locks) whose key is not in ``keep``.

        Only ever: ``<stage>/<key>`` directories of known stages that hold randsae's
        meta.json, ``.partial/<stage>/<key>`` directories, ``.locks/<stage>-<key>.lock``
        files and leftovers of an interrupted removal. Anything else under the root (a
        README, data/, logs/, the LLM response cache) is never offered. Raises NotAStore
        for a folder without the marker."""
        self.require()
        stages = known_stages()
        doomed = [d for d, meta in self._published() if meta["key"] not in keep]
        for s in stages:
            pdir = self.root / PARTIAL / s
            if pdir.is_dir():
                doomed += [d for d in sorted(pdir.iterdir()) if KEY_RE.fullmatch(d.name) and d.is_dir() and d.name not in keep]
        locks = self.root / LOCKS
        if locks.is_dir():
            for p in sorted(locks.iterdir()):
                s, _, key = p.name.removesuffix(".lock").rpartition("-")
                if p.name.endswith(".lock") and p.is_file() and s in stages and KEY_RE.fullmatch(key) and key not in keep:
                    doomed.append(p)
        trash = self.root / REMOVING
        if trash.is_dir():
            doomed += sorted(trash.iterdir())
        if not dry_run:
            for p in doomed:
                if p.parent == trash:
                    shutil.rmtree(p, ignore_errors=True)
                elif p.is_dir() and p.parent.parent == self.root:  # a published artifact: atomically
                    self._discard(p)
                elif p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink(missing_ok=True)
        return doomed


def _split_ref(ref: str) -> tuple[str, str]:
    stage, _, key = ref.partition("/")
    if not (stage and KEY_RE.fullmatch(key)):
        raise ValueError(f"not an artifact reference <stage>/<key>: {ref!r}")
    return stage, key
