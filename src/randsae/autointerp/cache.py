"""Response cache: every LLM call keyed by sha256 of what determines its answer.

Why: explanations and scores are by far the most expensive part of the pipeline (API money or
GPU hours), and Snakemake reruns a whole explain/score job when anything upstream changes or a
job is killed. With this cache a rerun makes zero calls for finished prompts, and a killed
run resumes where it stopped, because each result is written the moment it arrives.

Layout: ``<root>/<key[:2]>/<key>.json``, one small JSON file per call, written to a temporary
file in the same directory and renamed, so a killed writer leaves no half entry and many
processes (Snakemake jobs on a shared filesystem) can share one cache without locks.

Key: sha256 of the canonical JSON of {cache format version, call kind, client name, model,
client settings that change answers, the full prompt, generation parameters or choices}. No
credential is part of the key or the stored record: clients expose only model settings
(``cache_identity``), and the record holds the request (prompt text) and the response.
Transient failures (``error_kind == "api"``) are not stored, so a rerun retries them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from randsae.autointerp.clients import (
    DEFAULT_PARAMS,
    AnswerProbabilities,
    Client,
    Completion,
    GenParams,
    ProbabilityMode,
    ResultCallback,
)
from randsae.autointerp.types import Prompt

CACHE_FORMAT = 1


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def request_key(payload: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    writes: int = 0


class ResponseCache:
    """A directory of JSON entries keyed by request hash."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.stats = CacheStats()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            with open(self.path(key), encoding="utf-8") as f:
                record = json.load(f)
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            self.stats.misses += 1
            return None
        if not isinstance(record, dict) or record.get("key") != key:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return record

    def put(self, key: str, request: Mapping[str, Any], response: Mapping[str, Any]) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"key": key, "format": CACHE_FORMAT, "created": time.time(), "request": request, "response": response}
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:8]}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.stats.writes += 1

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("[0-9a-f][0-9a-f]/*.json"))


class CachedClient:
    """A :class:`~randsae.autointerp.clients.Client` that answers from a :class:`ResponseCache`
    where it can and asks the wrapped client only for the rest (in one batch)."""

    def __init__(self, inner: Client, cache: ResponseCache) -> None:
        self.inner = inner
        self.cache = cache
        self.name: str = inner.name
        self.model: str = inner.model
        self.probability_mode: ProbabilityMode = inner.probability_mode
        self.supports_prefill: bool = inner.supports_prefill

    def cache_identity(self) -> dict[str, Any]:
        ident = getattr(self.inner, "cache_identity", None)
        return dict(ident()) if callable(ident) else {}

    def _payload(self, kind: str, prompt: Prompt, extra: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "format": CACHE_FORMAT,
            "kind": kind,
            "client": self.name,
            "model": self.model,
            "settings": self.cache_identity(),
            "prompt": prompt.to_dict(),
            **extra,
        }

    def complete(self, prompt: Prompt, params: GenParams = DEFAULT_PARAMS) -> Completion:
        return self.complete_many([prompt], params)[0]

    def complete_many(
        self, prompts: Sequence[Prompt], params: GenParams = DEFAULT_PARAMS, on_result: ResultCallback | None = None
    ) -> list[Completion]:
        payloads = [self._payload("complete", p, {"params": params.to_dict()}) for p in prompts]

        def call(todo: list[Prompt], cb: ResultCallback) -> list[Any]:
            return list(self.inner.complete_many(todo, params, cb))

        results = self._run(prompts, payloads, call, Completion.from_dict, on_result)
        return results

    def answer_probabilities(
        self, prompts: Sequence[Prompt], choices: Sequence[str] = ("0", "1"), on_result: ResultCallback | None = None
    ) -> list[AnswerProbabilities]:
        payloads = [self._payload("probabilities", p, {"choices": list(choices)}) for p in prompts]

        def call(todo: list[Prompt], cb: ResultCallback) -> list[Any]:
            return list(self.inner.answer_probabilities(todo, choices, cb))

        return self._run(prompts, payloads, call, AnswerProbabilities.from_dict, on_result)

    def _run(
        self,
        prompts: Sequence[Prompt],
        payloads: Sequence[dict[str, Any]],
        call: Callable[[list[Prompt], ResultCallback], list[Any]],
        decode: Callable[[Mapping[str, Any]], Any],
        on_result: ResultCallback | None,
    ) -> list[Any]:
        """Shared hit/miss logic: hits decoded with ``cached=True`` and zero cost; misses
        deduplicated, sent in one call, each stored as soon as it arrives."""
        keys = [request_key(p) for p in payloads]
        results: list[Any] = [None] * len(prompts)
        todo: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            if key in todo:
                todo[key].append(i)
                continue
            record = self.cache.get(key)
            if record is not None:
                try:
                    results[i] = _as_cached(decode(record["response"]))
                except (KeyError, TypeError, ValueError):
                    results[i] = None
            if results[i] is None:
                todo[key] = [i]
            elif on_result is not None:
                on_result(i, results[i])
        if not todo:
            return results
        todo_keys = list(todo)
        todo_prompts = [prompts[todo[k][0]] for k in todo_keys]

        def store(j: int, result: Any) -> None:
            key = todo_keys[j]
            completion = result if isinstance(result, Completion) else result.completion
            if completion.cacheable:
                self.cache.put(key, payloads[todo[key][0]], result.to_dict())
            for i in todo[key]:
                results[i] = result
                if on_result is not None:
                    on_result(i, result)

        fresh = call(todo_prompts, store)
        for j, result in enumerate(fresh):  # backends that do not call back still get stored
            if results[todo[todo_keys[j]][0]] is None:
                store(j, result)
        return results


def _as_cached(result: Any) -> Any:
    """Mark a cache hit: no new cost, no new tokens billed (the record keeps the original)."""
    if isinstance(result, Completion):
        return replace(result, cached=True, cost_usd=0.0)
    if isinstance(result, AnswerProbabilities):
        return replace(result, completion=replace(result.completion, cached=True, cost_usd=0.0))
    return result
