"""Load, validate and normalise a randsae config.

One JSON Schema (config/schema.yaml) validates every config. After validation the config is
normalised: every default is written in and every ``number`` field becomes a float. Keys
are computed from the normalised form only, so the key order in the YAML, writing a default
or omitting it, and ``1`` versus ``1.0`` never change an artifact key.

Errors name the key path (``models.pythia-70m.layers[2]``) and what is allowed.
"""

from __future__ import annotations

import copy
import difflib
import functools
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from randsae.enums import LLM_SCORERS, NO_LLM_SCORERS, SCORERS, SPLITS_IN_ORDER, VARIANTS
from randsae.errors import RandsaeError
from randsae.yaml_keys import duplicate_keys

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "config"
SCHEMA_PATH = CONFIG_DIR / "schema.yaml"
DEFAULT_CONFIG = CONFIG_DIR / "config.yaml"

Config = dict[str, Any]


class ConfigError(RandsaeError, ValueError):
    """A config that does not validate; the message lists every problem with its key path."""


@functools.cache
def schema() -> dict[str, Any]:
    """config/schema.yaml, with the enumerations filled in from :mod:`randsae.enums`."""
    with open(SCHEMA_PATH) as f:
        return _fill_enums(yaml.safe_load(f))


def _fill_enums(s: dict[str, Any]) -> dict[str, Any]:
    """Write the closed lists (variants, scorers, splits) into the schema: the YAML keeps
    their descriptions, the lists themselves are defined once, in randsae.enums. A list the
    YAML does give must agree, so a stale copy fails loudly instead of shadowing the code."""
    props = s["properties"]
    ai = props["autointerp"]["properties"]
    # (where, node, names, keys to fill): scorers' default is "auto", resolved in normalise
    filled = [
        ("variants", props["variants"], list(VARIANTS), ("default", "items")),
        ("autointerp.scorers", ai["scorers"], list(SCORERS), ("items",)),
    ]
    for where, node, names, keys in filled:
        for key, value in (("default", names), ("items", {"enum": names})):
            if key not in keys:
                continue
            if key in node and node[key] != value:
                raise RuntimeError(f"{SCHEMA_PATH}: {where}.{key} is {node[key]!r}; randsae.enums gives {value!r} "
                                   f"(leave it out of the YAML: it is filled in from randsae.enums)")
            node[key] = value
    splits = props["corpus"]["properties"]["splits"]
    splits["required"] = list(SPLITS_IN_ORDER)
    splits["properties"] = {name: {"$ref": "#/$defs/split"} for name in SPLITS_IN_ORDER}
    return s


def _key_path(path: Iterator[Any] | Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _subschema(err: ValidationError) -> dict[str, Any]:
    s = err.schema
    return s if isinstance(s, dict) else {}


def _allowed_keys(err: ValidationError) -> list[str]:
    return sorted(_subschema(err).get("properties", {}))


def _describe(err: ValidationError) -> str:
    """One line per problem: the key path, then what is wrong and what is allowed."""
    where = _key_path(err.absolute_path)
    v = err.validator
    if v == "additionalProperties" and isinstance(err.instance, dict):
        allowed = _allowed_keys(err)
        if not allowed:  # a mapping of names (models): the problem is inside, not the name
            return f"{where}: {err.message}"
        lines = []
        for extra in sorted(set(err.instance) - set(allowed)):
            hint = difflib.get_close_matches(extra, allowed, n=1)
            near = f"; did you mean {hint[0]!r}?" if hint else ""
            key = f"{where}.{extra}" if err.absolute_path else extra
            lines.append(f"{key}: unknown key (allowed: {', '.join(allowed)}){near}")
        return "\n".join(lines)
    if v == "required":
        return f"{where}: {err.message} (required keys: {', '.join(err.validator_value)})"
    if v == "pattern" and err.validator_value == "^auto$" and "enum" in _subschema(err).get("items", {}):
        names = ", ".join(map(repr, _subschema(err)["items"]["enum"]))
        return f"{where}: {err.instance!r} is not allowed; give auto or a list of: {names}"
    if v == "enum":
        return f"{where}: {err.instance!r} is not allowed; allowed: {', '.join(map(repr, err.validator_value))}"
    if v == "type":
        want = err.validator_value
        want = " or ".join(want) if isinstance(want, list) else want
        return f"{where}: must be of type {want}, got {type(err.instance).__name__} {err.instance!r}"
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[v]
        return f"{where}: {err.instance!r} is out of range; must be {op} {err.validator_value}"
    if v == "oneOf":
        desc = _subschema(err).get("description", "see config/schema.yaml")
        return f"{where}: {err.instance!r} is not valid; expected {desc}"
    if v == "propertyNames" or "propertyNames" in err.schema_path:
        return f"{where}: name {err.instance!r} is not allowed; names use a-z, 0-9, '.', '_', '-'"
    return f"{where}: {err.message}"


#: Execution settings that used to sit in their stage's section: a clear pointer, not
#: "unknown key", for configs written before they moved to ``execution``.
MOVED_KEYS: dict[str, str] = {
    "activations.batch_size": "execution.activations.batch_size",
    "activations.chunk_tokens": "execution.activations.chunk_tokens",
    "sae.checkpoint_every_steps": "execution.sae.checkpoint_every_steps",
    "metrics.batch_size": "execution.sae_metrics.batch_size",
}


def _moved_problems(cfg: Mapping[str, Any]) -> list[str]:
    out = []
    for old, new in MOVED_KEYS.items():
        section, key = old.split(".")
        node = cfg.get(section)
        if isinstance(node, Mapping) and key in node:
            out.append(f"{old}: moved to {new} (an execution setting, in no artifact key)")
    return out


def validate(cfg: Mapping[str, Any]) -> None:
    """Raise ConfigError listing every schema violation and cross-field problem."""
    moved = _moved_problems(cfg)
    if moved:
        raise ConfigError("invalid config:\n  " + "\n  ".join(moved))
    validator = Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (list(map(str, e.absolute_path)), e.validator))
    problems = [_describe(e) for e in errors]
    if not problems:
        problems = _cross_field_problems(cfg)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


_SOURCE_FIELDS = {"packaged": {"name"}, "hub": {"id"}, "local": {"path"}, "gguf": {"path"}}
_CORPUS_FIELDS = {"packaged": {"name"}, "hf": {"id"}, "files": {"paths", "format"}}


def _need(where: str, src: Mapping[str, Any], kinds: dict[str, set[str]]) -> list[str]:
    kind = src["kind"]
    missing = sorted(kinds[kind] - set(src))
    if missing:
        return [f"{where}: kind {kind!r} needs {', '.join(missing)}"]
    return []


def _cross_field_problems(cfg: Mapping[str, Any]) -> list[str]:
    """Rules a JSON schema states badly: which fields each source kind needs."""
    problems: list[str] = []
    for name, m in cfg["models"].items():
        problems += _need(f"models.{name}.source", m["source"], _SOURCE_FIELDS)
    problems += _need("corpus.source", cfg["corpus"]["source"], _CORPUS_FIELDS)
    return problems


# ---------------------------------------------------------------------------- normalisation


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if not ref:
        return node
    target: Any = schema()
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return {**target, **{k: v for k, v in node.items() if k != "$ref"}}


def _normalise(value: Any, node: dict[str, Any]) -> Any:
    node = _resolve(node)
    if isinstance(value, dict):
        out = {}
        props = node.get("properties", {})
        extra = node.get("additionalProperties")
        for key, sub in props.items():
            if key in value:
                out[key] = _normalise(value[key], sub)
            elif "default" in _resolve(sub):
                out[key] = _normalise(copy.deepcopy(_resolve(sub)["default"]), sub)
        for key in value:
            if key not in props and isinstance(extra, dict):
                out[key] = _normalise(value[key], extra)
        return out
    if isinstance(value, list):
        items = node.get("items")
        return [_normalise(v, items) if isinstance(items, dict) else v for v in value]
    types = node.get("type")
    types = types if isinstance(types, list) else [types]
    if "number" in types and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def normalise(cfg: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Validated config with every default filled in and the ``auto`` values of
    ``autointerp.client``, ``autointerp.scorers`` and ``autointerp.explainer`` resolved (does
    not touch the input).

    ``client: auto`` becomes the client that will really run (anthropic when
    ANTHROPIC_API_KEY is set in ``env``, default os.environ; else local), so the explain and
    score keys say which judge made them. Only the presence of the key is read, never its
    value. ``scorers: auto`` and ``explainer: auto`` follow whether an LLM client is
    configured (:func:`_llm_configured`): with one, detection and fuzzing scores of LLM
    explanations, as before; without, the LLM-free token-list explanations and lexical
    scores, so a fresh checkout's default run asks no LLM."""
    validate(cfg)
    out = _normalise(copy.deepcopy(dict(cfg)), schema())
    validate(out)  # defaults must themselves be valid
    env = os.environ if env is None else env
    ai = out["autointerp"]
    llm = _llm_configured(ai["client"], env)
    if ai["scorers"] == "auto":
        ai["scorers"] = list(LLM_SCORERS if llm else NO_LLM_SCORERS)
    if ai["explainer"] == "auto":
        ai["explainer"] = "llm" if llm else "token_list"
    if ai["client"] == "auto":
        ai["client"] = "anthropic" if env.get("ANTHROPIC_API_KEY") else "local"
    return out


def _llm_configured(client: str, env: Mapping[str, str]) -> bool:
    """An LLM client is configured when ``autointerp.client`` names one (anthropic, or local:
    the user chose a local judge) or is auto with ANTHROPIC_API_KEY set. ``auto`` without the
    key (the shipped default on a machine without credentials) is "no LLM": the packaged
    SmolLM2 judge is only a plumbing check, so it is never picked silently."""
    return client != "auto" or bool(env.get("ANTHROPIC_API_KEY"))


def read_yaml(path: str | Path) -> Any:
    """A YAML config file's contents; ConfigError when it is missing, not YAML, or gives a
    key twice in one mapping (PyYAML would let the last one win without a word)."""
    try:
        with open(path) as f:
            text = f.read()
        raw = yaml.safe_load(text)
        dups = duplicate_keys(text)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if dups:
        raise ConfigError(f"config file {path}:\n  " + "\n  ".join(dups))
    return raw


def load_config(path: str | Path | None = None) -> Config:
    """Read a YAML config (default: config/config.yaml), validate and normalise it."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping, got {type(raw).__name__}")
    try:
        return normalise(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def as_list(v: int | list[int]) -> list[int]:
    """Grid fields accept one value or a list."""
    return list(v) if isinstance(v, list) else [v]
