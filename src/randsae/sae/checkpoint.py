"""Atomic training checkpoints: one file per checkpointed step, latest wins.

A checkpoint is written to a temporary file in the checkpoint directory, flushed to disk, then
renamed to ``step-<step>.pt``; a rename is atomic on POSIX filesystems, so a kill at any moment
leaves either the previous set of checkpoints or the new one, never a truncated file that looks
valid. Only the newest ``keep`` checkpoints are kept. Everything saved is a tensor or a plain
Python value, so loading uses ``torch.load(weights_only=True)`` (no pickled code).
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

CKPT_RE = re.compile(r"^step-(\d{10})\.pt$")
TMP_PREFIX = ".tmp-"


def checkpoint_path(ckpt_dir: str | Path, step: int) -> Path:
    return Path(ckpt_dir) / f"step-{step:010d}.pt"


def list_checkpoints(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := CKPT_RE.match(p.name))]
    return sorted(found)


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    found = list_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def save_checkpoint(ckpt_dir: str | Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` atomically as the checkpoint of ``step``; prune all but the newest ``keep``."""
    d = Path(ckpt_dir)
    d.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(d, step)
    tmp = d / f"{TMP_PREFIX}{final.name}.{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(d)
    for _, old in list_checkpoints(d)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)


def remove_temporaries(ckpt_dir: str | Path) -> None:
    """Delete half-written temporaries left by a killed run (they never look like checkpoints)."""
    d = Path(ckpt_dir)
    if d.is_dir():
        for p in d.iterdir():
            if p.name.startswith(TMP_PREFIX):
                p.unlink(missing_ok=True)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- RNG states as plain values (so weights_only loading works) ---------------------------------


def capture_rng_states() -> dict[str, Any]:
    """Every global RNG the process might draw from: torch (CPU, CUDA), numpy, python."""
    np_state: tuple[Any, ...] = tuple(np.random.get_state(legacy=True))
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": _to_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    # .cpu(): a checkpoint loaded with map_location=cuda has these state tensors on the GPU,
    # but every RNG setter (and .numpy()) takes CPU tensors.
    torch.set_rng_state(states["torch"].cpu())
    name, key, pos, has_gauss, cached = states["numpy"]
    np.random.set_state(
        (name, key.cpu().numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached))
    )
    random.setstate(_to_tuple(states["python"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return [_to_plain(o) for o in obj]
    return obj


def _to_tuple(obj: Any) -> Any:
    if isinstance(obj, list):
        return tuple(_to_tuple(o) for o in obj)
    return obj
