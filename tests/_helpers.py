"""Helpers shared by tests (importable as `_helpers` from any test folder)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any


def tiny_config(model_dir: Path | str, store: Path | str, **over: Any) -> dict[str, Any]:
    """A small but complete config over the tiny model and the packaged corpus."""
    cfg: dict[str, Any] = {
        "store": str(store),
        "results": str(Path(store).parent / "results"),
        "seed": 0,
        "models": {"tiny": {"source": {"kind": "local", "path": str(model_dir)}, "layers": [1], "dtype": "float32"}},
        "variants": ["trained", "rerandomized"],
        "corpus": {
            "name": "kjv",
            "source": {"kind": "packaged", "name": "kjv"},
            "splits": {
                "eval": {"tokens": 2048, "ctx_len": 64},
                "interp": {"tokens": 2048, "ctx_len": 32},
                "train": {"tokens": 8192, "ctx_len": 64},
            },
        },
        "sae": {"expansion": 2, "k": 4, "batch_size": 256, "warmup_steps": 2},
        # deterministic explanations; the tiny model itself is the (weak, fast) local judge
        "autointerp": {"n_latents": 2, "min_activations": 2, "explainer_examples": 4, "test_examples": 4, "non_activating": 2,
                       "explainer": "token_list", "client": "local", "local_model": str(model_dir)},
    }
    for dotted, value in over.items():
        node = cfg
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return copy.deepcopy(cfg)


def store_contents(store: Any, skip: frozenset[str] = frozenset({"train_summary.json"})) -> dict[str, dict]:
    """key -> {file: size and sha256} for every artifact of a ``randsae.store.Store``, to
    compare two stores bit for bit. The SAE training summary records wall time: left out."""
    return {m["key"]: {f: v for f, v in m["files"].items() if f not in skip} for m in store.iter_meta()}
