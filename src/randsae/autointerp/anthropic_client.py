"""Claude through the Anthropic Messages and Message Batches APIs.

Why these choices:

- Interactive runs use the Messages API (a few concurrent requests); bulk runs
  (``mode="batch"``, what the stages use by default) use the Message Batches API at half
  price: submit, poll, fetch results by ``custom_id``. Errored, expired or missing items
  become recorded failures (not cached, so a rerun retries them); the others are unaffected.
- A request is never billed twice by one pipeline. A journal entry (``journal_dir``) is
  written *before* ``batches.create`` is sent and kept until the results were handed on to
  the response cache. A create that fails without a clear refusal (timeout, 5xx, lost
  response) may still have made a batch, so before resubmitting, and whenever a run finds an
  entry without a batch id, the batch list is searched for a batch of that size created since
  the first attempt; a candidate is adopted only if its results hold exactly the entry's
  request ids (the API stores no metadata on a batch). If the list cannot be read, nothing is
  resubmitted: the calls fail (transiently) and the next run looks again.
- Prompt caching: ``cache_control`` marks the shared instructions (system block) and the
  per-latent context (the explanation under test), so the thirty scoring calls of a latent
  re-read that prefix at 0.1x the input price. (The API caches only prefixes above a
  model-dependent minimum length, e.g. 1024 tokens for Sonnet; the stages warn when a marked
  prefix is never read back.)
- Every request sets ``max_tokens`` and ``thinking`` explicitly: thinking off (``disabled``, or
  ``between_tools`` where the model wants that; models that always think get extra
  ``max_tokens``), chosen from the model's capabilities (``models.retrieve``, once per
  client). A reply cut at ``max_tokens`` is a ``truncated`` failure, counted and reported,
  never parsed or cached.
- Retries: our own loop (:mod:`.retry`) with exponential backoff, jitter and ``retry-after``
  honoured, for 408/409/429/5xx/529, timeouts, connection errors and malformed bodies; the
  SDK's own retries are off (``max_retries=0``) so attempts are counted once. What a failure
  that remains means is decided by :func:`randsae.autointerp.clients.failure_class`.
- Claude returns no token logprobs, so judging asks for a probability per example in JSON
  (structured output where the model supports it) and parses it robustly.
- The API key is read from ANTHROPIC_API_KEY only, handed to the SDK and nowhere else: it is
  not an attribute of this object, not part of any cache key, journal, log line, failure reason
  or result (reasons are also scrubbed of it, in case a server echoes it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

import anthropic

from randsae.autointerp.cache import canonical_json
from randsae.autointerp.clients import (
    DEFAULT_PARAMS,
    AnswerProbabilities,
    Completion,
    GenParams,
    ProbabilityMode,
    ResultCallback,
    Usage,
)
from randsae.autointerp.parsing import parse_stated_probabilities
from randsae.autointerp.pricing import Price, cost_usd, unpriced_warning
from randsae.autointerp.retry import Outcome, RetryDecision, RetryPolicy, call_with_retries
from randsae.autointerp.types import Prompt

log = logging.getLogger(__name__)

API_KEY_ENV = "ANTHROPIC_API_KEY"
DEFAULT_MODEL = "claude-sonnet-5-5"

#: Structured-output schema of a judge reply (one entry per example).
ANSWERS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "answers": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"example": {"type": "integer"}, "probability": {"type": "number"}},
                "required": ["example", "probability"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["answers"],
    "additionalProperties": False,
}


#: HTTP statuses that refuse this very request (an answer about it, kept and counted; not cached).
REJECTED_STATUSES = (400, 413, 422)
#: Batch item error types that mean the same.
REJECTED_ERROR_TYPES = frozenset({"invalid_request_error", "request_too_large"})
#: Stop reasons of a reply cut short (reported as ``truncated``, never parsed or cached).
TRUNCATING_STOPS = frozenset({"max_tokens", "model_context_window_exceeded"})
#: Candidate batches a search may try (each confirmed or refuted by its results) before giving up.
_MAX_SEARCH_ROUNDS = 8


def judge_max_tokens(n_items: int) -> int:
    """``max_tokens`` of a judge reply of ``n_items`` answers, set explicitly (never the model's
    default): the JSON answer takes about 12 tokens per item; the rest is slack."""
    return 64 + 24 * n_items


class _RequestSetup(NamedTuple):
    """The model-dependent part of every request body."""

    thinking: dict[str, Any]
    extra_max_tokens: int


class AnthropicConfigError(RuntimeError):
    """The client cannot be set up (e.g. no API key in the environment)."""


class _Redactor:
    """Removes the key from text; holds it without exposing it in repr/str."""

    def __init__(self, secret: str) -> None:
        self._secret = secret

    def __call__(self, text: str) -> str:
        return text.replace(self._secret, "[redacted]") if self._secret else text

    def __repr__(self) -> str:
        return "<redactor>"


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds; HTTP dates are ignored)."""
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            continue
    return None


def _value(outcome: Outcome[Any]) -> Any:
    """The value of a successful outcome (for the type checker: never None here)."""
    assert outcome.ok and outcome.value is not None
    return outcome.value


class _Entry:
    """One journaled batch: the request ids it holds, the batch id once known, and when a
    create was first sent (``intent_at``, our clock), which bounds the search for a batch whose
    create response was lost. ``verified``: the batch id came from a create response, or its
    results were checked to hold exactly these requests."""

    def __init__(self, ids: Sequence[str], path: Path | None, batch_id: str | None = None,
                 intent_at: float | None = None, verified: bool = True) -> None:
        self.ids = list(ids)
        self.path = path
        self.batch_id = batch_id
        self.intent_at = intent_at
        self.verified = verified


class _Journal:
    """Batches that were (or may have been) submitted and whose results are not yet in the
    response cache, one JSON file each, named by a fingerprint of the request set.

    Written before ``batches.create`` is sent, updated with the batch id when it returns, and
    removed only after the results were handed on (and so cached). A run finds an entry by
    any request it still wants, not by the exact set, so a run that was killed half-way
    through storing results fetches the same batch instead of paying for the rest again.
    Holds request ids (hashes of the request bodies) and batch ids only: no prompt, no key."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root) if root is not None else None

    @staticmethod
    def fingerprint(ids: Sequence[str]) -> str:
        return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:32]

    def new(self, ids: Sequence[str]) -> _Entry:
        path = None if self.root is None else self.root / f"{self.fingerprint(ids)}.json"
        return _Entry(ids, path)

    def save(self, entry: _Entry) -> None:
        if entry.path is None:
            return
        entry.path.parent.mkdir(parents=True, exist_ok=True)
        body = {"fingerprint": entry.path.stem, "batch_id": entry.batch_id, "intent_at": entry.intent_at,
                "verified": entry.verified, "n_requests": len(entry.ids), "custom_ids": entry.ids,
                "updated": time.time()}
        tmp = entry.path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(body))
        os.replace(tmp, entry.path)

    def remove(self, entry: _Entry) -> None:
        if entry.path is not None:
            entry.path.unlink(missing_ok=True)

    def entries(self) -> list[_Entry]:
        """Every readable entry (an unreadable file is skipped, not fatal), oldest first."""
        if self.root is None or not self.root.is_dir():
            return []
        out = []
        for path in sorted(self.root.glob("*.json")):
            try:
                d = json.loads(path.read_text())
                out.append(_Entry(d["custom_ids"], path, d.get("batch_id"), d.get("intent_at"),
                                  bool(d.get("verified", True))))
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("ignoring unreadable batch journal %s", path)
        return out

    def claimed(self) -> set[str]:
        """Batch ids other entries already own (never adopted by a search)."""
        return {e.batch_id for e in self.entries() if e.batch_id}


class _BatchOutcome(NamedTuple):
    """Results by custom_id; ``settled``: the journal entry may go (results fetched, or nothing
    was submitted). Unsettled failures keep it, so the next run looks for the batch again."""

    results: dict[str, Completion]
    settled: bool


class AnthropicClient:
    """Claude as explainer and judge (see the module docstring)."""

    name = "anthropic"
    probability_mode: ProbabilityMode = "stated"
    supports_prefill = False

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        mode: Literal["messages", "batch"] = "messages",
        base_url: str | None = None,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        concurrency: int = 4,
        poll_interval: float = 30.0,
        max_batch_wait: float = 26 * 3600.0,
        max_batch_requests: int = 10_000,
        batch_search_skew: float = 600.0,
        prompt_caching: bool = True,
        structured_output: bool = True,
        thinking: Literal["off", "adaptive"] = "off",
        thinking_headroom: int = 2048,
        price: Price | None = None,
        journal_dir: str | Path | None = None,
        http_client: Any = None,
        env: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
    ) -> None:
        if mode not in ("messages", "batch"):
            raise ValueError(f"mode must be 'messages' or 'batch', not {mode!r}")
        if thinking not in ("off", "adaptive"):
            raise ValueError(f"thinking must be 'off' or 'adaptive', not {thinking!r}")
        key = (os.environ if env is None else env).get(API_KEY_ENV, "")
        if not key:
            raise AnthropicConfigError(
                f"the Anthropic client needs the {API_KEY_ENV} environment variable "
                "(or set autointerp.client: local)"
            )
        self.model = model
        self.mode = mode
        self.retry = retry or RetryPolicy()
        self.concurrency = max(1, concurrency)
        self.poll_interval = poll_interval
        self.max_batch_wait = max_batch_wait
        self.max_batch_requests = max(1, min(max_batch_requests, 100_000))
        self.batch_search_skew = batch_search_skew
        self.prompt_caching = prompt_caching
        self.structured_output = structured_output
        self.thinking = thinking
        self.thinking_headroom = max(0, thinking_headroom)
        self.price = price
        self.unpriced_warning = unpriced_warning(model, price)
        if self.unpriced_warning:
            log.warning(self.unpriced_warning)
        self._journal = _Journal(journal_dir)
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._setup_lock = threading.Lock()
        self._setup: _RequestSetup | None = None
        self._redact = _Redactor(key)
        self._sdk = anthropic.Anthropic(
            api_key=key, base_url=base_url, timeout=timeout, max_retries=0, http_client=http_client
        )

    def __repr__(self) -> str:
        return f"AnthropicClient(model={self.model!r}, mode={self.mode!r})"

    def cache_identity(self) -> dict[str, Any]:
        # thinking "off" is what every earlier cache entry was asked with: it stays out of the key
        ident: dict[str, Any] = {"structured_output": self.structured_output}
        if self.thinking != "off":
            ident["thinking"] = self.thinking
        return ident

    # ---------------------------------------------------------------- requests

    def request_params(self, prompt: Prompt, params: GenParams, schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The Messages API body for a prompt (also the ``params`` of a batch request), before
        the model-dependent ``thinking`` field is added (:meth:`_finish`)."""
        cache = {"cache_control": {"type": "ephemeral"}} if self.prompt_caching else {}
        content: list[dict[str, Any]] = []
        if prompt.context:
            content.append({"type": "text", "text": prompt.context, **cache})
        content.append({"type": "text", "text": prompt.user})
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": params.max_tokens,
            "system": [{"type": "text", "text": prompt.system, **cache}],
            "messages": [{"role": "user", "content": content}],
        }
        if params.stop:
            body["stop_sequences"] = list(params.stop)
        if schema is not None and self.structured_output:
            body["output_config"] = {"format": {"type": "json_schema", "schema": dict(schema)}}
        return body

    def _request_setup(self) -> _RequestSetup | Outcome[Any]:
        """The ``thinking`` field this model needs, looked up once (lazily: a run served from
        the response cache makes no call). Why look it up: what omitting ``thinking`` means
        depends on the model (recent models think adaptively by default, and thinking tokens
        count against ``max_tokens``, so a judge reply could be cut), and which ``type`` turns
        it off does too (``disabled``, or ``between_tools`` on Sonnet 5.5). The model's
        capabilities say which it accepts. A model that cannot stop thinking gets
        ``thinking_headroom`` extra ``max_tokens``."""
        with self._setup_lock:
            if self._setup is not None:
                return self._setup
            got = self._with_retries(lambda: self._sdk.models.retrieve(self.model), "models.retrieve")
            if not got.ok:
                if "HTTP 404" not in got.reason:
                    return got
                log.warning("model %s: no model information (%s); sending thinking disabled", self.model, got.reason)
                self._setup = _RequestSetup({"type": "disabled"}, 0)
                return self._setup
            self._setup = self._setup_from(getattr(got.value, "capabilities", None))
            log.info("model %s: thinking %s, %d extra max_tokens", self.model, self._setup.thinking["type"],
                     self._setup.extra_max_tokens)
            return self._setup

    def _setup_from(self, caps: Any) -> _RequestSetup:
        if self.thinking == "adaptive":
            return _RequestSetup({"type": "adaptive"}, self.thinking_headroom)
        types = getattr(getattr(caps, "thinking", None), "types", None)
        if types is None:  # no capability information: a model without thinking accepts "disabled"
            return _RequestSetup({"type": "disabled"}, 0)
        for kind in ("disabled", "between_tools"):
            if getattr(getattr(types, kind, None), "supported", False):
                return _RequestSetup({"type": kind}, 0)
        log.warning("model %s cannot turn thinking off: thinking adaptively with %d extra max_tokens per call",
                    self.model, self.thinking_headroom)
        return _RequestSetup({"type": "adaptive"}, self.thinking_headroom)

    @staticmethod
    def _finish(body: dict[str, Any], setup: _RequestSetup) -> dict[str, Any]:
        return {**body, "max_tokens": body["max_tokens"] + setup.extra_max_tokens, "thinking": dict(setup.thinking)}

    def _classify(self, err: BaseException) -> RetryDecision:
        if isinstance(err, anthropic.APITimeoutError):
            return RetryDecision(True, "timeout")
        if isinstance(err, anthropic.APIConnectionError):
            return RetryDecision(True, "connection error")
        if isinstance(err, anthropic.APIStatusError):
            code = err.status_code
            detail = f" {err.type}" if getattr(err, "type", None) else ""
            msg = getattr(err, "api_message", None)
            reason = f"HTTP {code}{detail}" + (f": {msg}" if msg else "")
            retryable = code in (408, 409, 429) or code >= 500
            # a refusal of this very request is an answer; auth, permission or a missing model
            # is not (the stage must fail, not publish a table of failures)
            kind = "rejected" if code in REJECTED_STATUSES else "api"
            return RetryDecision(retryable, self._redact(reason)[:300], _retry_after(err.response.headers), kind)
        if isinstance(err, anthropic.APIResponseValidationError | ValueError):
            return RetryDecision(True, "malformed response")
        return RetryDecision(False, self._redact(f"{type(err).__name__}: {err}")[:300])

    def _with_retries(self, fn: Callable[[], Any], what: str) -> Outcome[Any]:
        """``fn`` under the retry policy; a retry is logged with its (secret-free) reason."""
        def on_retry(attempt: int, d: RetryDecision, wait: float) -> None:
            log.warning("%s: attempt %d failed (%s); retrying in %.2fs", what, attempt, d.reason, wait)

        return call_with_retries(fn, self._classify, self.retry, rng=self._child_rng(), sleep=self._sleep,
                                 on_retry=on_retry)

    def _child_rng(self) -> random.Random:
        with self._rng_lock:
            return random.Random(self._rng.random())

    def _to_completion(self, message: Any, *, batch: bool, attempts: int = 1) -> Completion:
        text = "".join(getattr(b, "text", "") for b in (message.content or []) if getattr(b, "type", "") == "text")
        u = message.usage
        usage = Usage(
            int(getattr(u, "input_tokens", 0) or 0),
            int(getattr(u, "output_tokens", 0) or 0),
            int(getattr(u, "cache_read_input_tokens", 0) or 0),
            int(getattr(u, "cache_creation_input_tokens", 0) or 0),
        )
        model = getattr(message, "model", None) or self.model
        common = {
            "stop_reason": message.stop_reason,
            "usage": usage,
            "cost_usd": cost_usd(model, usage, batch=batch, price=self.price),
            "model": model,
            "client": self.name,
            "batch": batch,
            "attempts": attempts,
        }
        if message.stop_reason in TRUNCATING_STOPS:
            details = getattr(u, "output_tokens_details", None)
            thinking = int(getattr(details, "thinking_tokens", 0) or 0)
            reason = f"stop_reason {message.stop_reason} after {usage.output_tokens} output tokens" + (
                f" ({thinking} of them thinking)" if thinking else "")
            return Completion(text, False, "truncated", reason, **common)
        if message.stop_reason == "refusal":
            return Completion(text, False, "refusal", "stop_reason refusal", **common)
        if not text.strip():
            return Completion(text, False, "empty", "empty response", **common)
        return Completion(text, **common)

    # ---------------------------------------------------------------- completion

    def complete(self, prompt: Prompt, params: GenParams = DEFAULT_PARAMS) -> Completion:
        return self.complete_many([prompt], params)[0]

    def complete_many(
        self, prompts: Sequence[Prompt], params: GenParams = DEFAULT_PARAMS, on_result: ResultCallback | None = None
    ) -> list[Completion]:
        bodies = [self.request_params(p, params) for p in prompts]
        return self._run(bodies, on_result)

    def _run(self, bodies: Sequence[dict[str, Any]], on_result: ResultCallback | None) -> list[Completion]:
        if not bodies:
            return []
        setup = self._request_setup()
        if not isinstance(setup, _RequestSetup):
            fail = Completion.failure("api", f"model lookup failed: {setup.reason}", client=self.name,
                                      model=self.model, attempts=setup.attempts, cost_usd=None)
            for i in range(len(bodies)):
                if on_result is not None:
                    on_result(i, fail)
            return [fail] * len(bodies)
        finished = [self._finish(b, setup) for b in bodies]
        if self.mode == "batch":
            return self._run_batch(finished, on_result)
        return self._run_messages(finished, on_result)

    def _one_message(self, body: dict[str, Any]) -> Completion:
        outcome = self._with_retries(lambda: self._sdk.messages.create(**body), "messages.create")
        if not outcome.ok:
            return Completion.failure(
                outcome.kind or "api", outcome.reason, client=self.name, model=self.model, attempts=outcome.attempts,
                cost_usd=None,
            )
        try:
            return self._to_completion(outcome.value, batch=False, attempts=outcome.attempts)
        except Exception as err:  # noqa: BLE001
            return Completion.failure(
                "api", self._redact(f"unreadable response: {type(err).__name__}"), client=self.name, model=self.model
            )

    def _run_messages(self, bodies: Sequence[dict[str, Any]], on_result: ResultCallback | None) -> list[Completion]:
        results: list[Completion | None] = [None] * len(bodies)
        if self.concurrency == 1 or len(bodies) <= 1:
            for i, body in enumerate(bodies):
                results[i] = self._one_message(body)
                if on_result is not None:
                    on_result(i, results[i])
        else:
            with ThreadPoolExecutor(self.concurrency) as pool:
                futures = {pool.submit(self._one_message, body): i for i, body in enumerate(bodies)}
                for fut in as_completed(futures):
                    i = futures[fut]
                    results[i] = fut.result()
                    if on_result is not None:
                        on_result(i, results[i])
        return [r for r in results if r is not None]

    # ---------------------------------------------------------------- batches

    @staticmethod
    def custom_id(body: Mapping[str, Any]) -> str:
        """A batch custom_id from the request content (<= 64 chars of [A-Za-z0-9_-])."""
        return "r" + hashlib.sha256(canonical_json(body).encode()).hexdigest()[:48]

    def _run_batch(self, bodies: Sequence[dict[str, Any]], on_result: ResultCallback | None) -> list[Completion]:
        """Journaled batches first (any that holds a request wanted here), then new batches for
        the rest. A journal entry is removed only after its results were handed to
        ``on_result`` (which stores them in the response cache)."""
        ids = [self.custom_id(b) for b in bodies]
        where: dict[str, list[int]] = {}
        for i, cid in enumerate(ids):
            where.setdefault(cid, []).append(i)
        wanted = dict.fromkeys(where)
        results: list[Completion | None] = [None] * len(bodies)

        def emit(cid: str, completion: Completion) -> None:
            for i in where[cid]:
                results[i] = completion
                if on_result is not None:
                    on_result(i, completion)

        for entry in self._journal.entries():
            mine = [cid for cid in entry.ids if cid in wanted]
            if not mine:
                continue
            log.info("batch journal %s holds %d of these requests: resuming it", entry.path, len(mine))
            outcome = self._settle(entry, None)
            if outcome is None:  # nothing of it reached the server: its requests are new again
                self._journal.remove(entry)
                continue
            for cid in mine:
                emit(cid, outcome.results[cid])
                del wanted[cid]
            if outcome.settled:
                self._journal.remove(entry)

        rest = list(wanted)
        for start in range(0, len(rest), self.max_batch_requests):
            chunk = rest[start : start + self.max_batch_requests]
            requests = [{"custom_id": cid, "params": bodies[where[cid][0]]} for cid in chunk]
            entry = self._journal.new(chunk)
            outcome = self._settle(entry, requests)
            assert outcome is not None  # with requests, a batch is always created or failed
            for cid in chunk:
                emit(cid, outcome.results[cid])
            if outcome.settled:
                self._journal.remove(entry)
        return [r for r in results if r is not None]

    def _fail_all(self, ids: Sequence[str], reason: str, kind: str = "api") -> dict[str, Completion]:
        fail = Completion.failure(kind, reason, client=self.name, model=self.model, batch=True, cost_usd=None)
        return dict.fromkeys(ids, fail)

    def _settle(self, entry: _Entry, requests: list[dict[str, Any]] | None) -> _BatchOutcome | None:
        """Results for one journal entry: find its batch (by id, or by searching when a create
        may have reached the server without its response reaching us), create it if it surely
        does not exist (only when ``requests`` are given; else return None), then wait for it
        and fetch its results."""
        excluded: set[str] = set()  # batches found by a search whose results were not ours
        for _ in range(_MAX_SEARCH_ROUNDS):
            if entry.batch_id is None and entry.intent_at is not None:
                found = self._search(entry, excluded)
                if not found.ok:
                    reason = f"cannot tell whether a batch was already created ({found.reason}): not resubmitting"
                    return _BatchOutcome(self._fail_all(entry.ids, reason), settled=False)
                if found.value is not None:
                    entry.batch_id, entry.verified = str(found.value), False
                    self._journal.save(entry)
            if entry.batch_id is None:
                if requests is None:
                    return None
                failed = self._create(entry, requests, excluded)
                if failed is not None:
                    return failed
            collected = self._collect(entry)
            if collected is not None:
                return collected
            log.info("batch %s holds other requests: not ours", entry.batch_id)
            excluded.add(str(entry.batch_id))
            entry.batch_id, entry.verified = None, True
            self._journal.save(entry)
        reason = f"no batch of these {len(entry.ids)} requests found after {_MAX_SEARCH_ROUNDS} candidates"
        return _BatchOutcome(self._fail_all(entry.ids, reason), settled=False)

    def _create(self, entry: _Entry, requests: list[dict[str, Any]], excluded: set[str]) -> _BatchOutcome | None:
        """Submit once per attempt. Why not the generic retry loop: a create whose response is
        lost (timeout, 5xx after the server committed it) may have made a batch that is billed,
        so before every resubmission the batch list is searched for it. Sets ``entry.batch_id``
        and returns None when a batch exists; returns the failure otherwise."""
        rng = self._child_rng()
        decision = RetryDecision(False, "not attempted")
        for attempt in range(1, self.retry.max_attempts + 1):
            if entry.intent_at is None:
                entry.intent_at = time.time()
            self._journal.save(entry)  # before create: a lost response is then looked for, not resent
            try:
                batch = self._sdk.messages.batches.create(requests=requests)  # type: ignore[arg-type]
            except Exception as err:  # noqa: BLE001 - classified below
                decision = self._classify(err)
            else:
                entry.batch_id, entry.verified = str(batch.id), True
                self._journal.save(entry)
                log.info("submitted message batch %s with %d requests", batch.id, len(requests))
                return None
            if not decision.retryable:  # the server refused it: nothing was created
                return _BatchOutcome(self._fail_all(entry.ids, f"batch submission failed: {decision.reason}",
                                                    decision.kind), settled=True)
            if attempt == self.retry.max_attempts:
                break
            wait = self.retry.delay(attempt, decision.retry_after, rng)
            log.warning("batches.create: attempt %d failed (%s); looking for the batch, then retrying in %.2fs",
                        attempt, decision.reason, wait)
            self._sleep(wait)
            found = self._search(entry, excluded)
            if not found.ok:
                reason = (f"batch submission failed ({decision.reason}) and the batch list is unavailable "
                          f"({found.reason}): not resubmitting, so nothing is paid for twice")
                return _BatchOutcome(self._fail_all(entry.ids, reason), settled=False)
            if found.value is not None:
                entry.batch_id, entry.verified = str(found.value), False
                self._journal.save(entry)
                log.info("found message batch %s after a failed create: not resubmitting", found.value)
                return None
        return _BatchOutcome(self._fail_all(entry.ids, f"batch submission failed: {decision.reason}"), settled=False)

    def _search(self, entry: _Entry, excluded: set[str]) -> Outcome[Any]:
        """The newest batch created since the entry's first create (less ``batch_search_skew``
        for clock differences) with as many requests as the entry, not owned by another
        journal entry and not already found to hold other requests. The API keeps no metadata
        on a batch, so a candidate is confirmed by its results' custom_ids (:meth:`_collect`)."""
        since = (entry.intent_at or time.time()) - self.batch_search_skew
        claimed = self._journal.claimed() - {entry.batch_id}
        n = len(entry.ids)

        def scan() -> str | None:
            for b in self._sdk.messages.batches.list(limit=100):
                if b.created_at.timestamp() < since:
                    break
                if b.id in excluded or b.id in claimed or b.processing_status == "canceling":
                    continue
                c = b.request_counts
                if c.processing + c.succeeded + c.errored + c.canceled + c.expired == n:
                    return str(b.id)
            return None

        return self._with_retries(scan, "batches.list")

    def _collect(self, entry: _Entry) -> _BatchOutcome | None:
        """Wait for the entry's batch to end and read its results; None when an unverified
        batch turns out to hold other requests."""
        batch_id = str(entry.batch_id)
        deadline = time.monotonic() + self.max_batch_wait
        while True:
            status = self._with_retries(lambda: self._sdk.messages.batches.retrieve(batch_id), "batches.retrieve")
            if not status.ok:
                reason = f"batch {batch_id} status unavailable: {status.reason}"
                return _BatchOutcome(self._fail_all(entry.ids, reason), settled=False)
            if _value(status).processing_status == "ended":
                break
            if time.monotonic() > deadline:
                reason = f"batch {batch_id} did not end within {self.max_batch_wait:.0f}s (a rerun resumes it)"
                return _BatchOutcome(self._fail_all(entry.ids, reason), settled=False)
            self._sleep(self.poll_interval)
        fetched = self._with_retries(lambda: list(self._sdk.messages.batches.results(batch_id)), "batches.results")
        if not fetched.ok:
            reason = f"batch {batch_id} results unavailable: {fetched.reason}"
            return _BatchOutcome(self._fail_all(entry.ids, reason), settled=False)
        out: dict[str, Completion] = {}
        for item in _value(fetched):
            cid = getattr(item, "custom_id", None)
            if isinstance(cid, str) and cid not in out:
                out[cid] = self._batch_item(item.result)
        if not entry.verified:
            if set(out) != set(entry.ids):
                return None
            entry.verified = True
            self._journal.save(entry)
        for cid in entry.ids:
            if cid not in out:
                out[cid] = Completion.failure(
                    "api", f"missing from batch {batch_id} results", client=self.name, model=self.model, batch=True
                )
        return _BatchOutcome(out, settled=True)

    def _batch_item(self, result: Any) -> Completion:
        kind = getattr(result, "type", "unknown")
        error_kind = "api"
        if kind == "succeeded":
            try:
                return self._to_completion(result.message, batch=True)
            except Exception as err:  # noqa: BLE001
                reason = f"unreadable batch result: {type(err).__name__}"
        elif kind == "errored":
            detail = getattr(getattr(result, "error", None), "error", None)
            etype, emsg = getattr(detail, "type", "error"), getattr(detail, "message", "")
            reason = self._redact(f"batch item errored: {etype}" + (f": {emsg}" if emsg else ""))[:300]
            if etype in REJECTED_ERROR_TYPES:
                error_kind = "rejected"
        else:  # expired, canceled: nothing wrong with the request, ask again
            reason = f"batch item {kind}"
        return Completion.failure(error_kind, reason, client=self.name, model=self.model, batch=True, cost_usd=None)

    # ---------------------------------------------------------------- judging

    def answer_probabilities(
        self,
        prompts: Sequence[Prompt],
        choices: Sequence[str] = ("0", "1"),
        on_result: ResultCallback | None = None,
    ) -> list[AnswerProbabilities]:
        """A stated probability of ``choices[1]`` per item, parsed from JSON: P = (1 - p, p)."""
        if len(choices) != 2:
            raise ValueError("stated probabilities support exactly two choices (no, yes)")
        bodies = [
            self.request_params(p, GenParams(max_tokens=judge_max_tokens(p.n_items)), ANSWERS_SCHEMA) for p in prompts
        ]

        def convert(i: int, c: Completion) -> AnswerProbabilities:
            n = prompts[i].n_items
            if not c.ok:
                return AnswerProbabilities((None,) * n, c)
            parsed = parse_stated_probabilities(c.text, n)
            probs = tuple(None if p is None else (1.0 - p, p) for p in parsed.value)
            if not parsed.ok:
                c = replace(c, ok=False, error_kind=parsed.kind, reason=parsed.reason)
            elif parsed.reason:
                c = replace(c, reason=parsed.reason)
            return AnswerProbabilities(probs, c)

        converted: dict[int, AnswerProbabilities] = {}

        def forward(i: int, c: Completion) -> None:
            converted[i] = convert(i, c)
            if on_result is not None:
                on_result(i, converted[i])

        completions = self._run(bodies, forward)
        return [converted.get(i) or convert(i, c) for i, c in enumerate(completions)]
