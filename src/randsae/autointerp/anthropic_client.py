"""Claude through the Anthropic Messages and Message Batches APIs.

Why these choices:

- Interactive runs use the Messages API (a few concurrent requests); bulk runs
  (``mode="batch"``) use the Message Batches API at half price: submit, poll, fetch results by
  ``custom_id``. Errored, expired or missing items become recorded failures (not cached, so a
  rerun retries them); the others are unaffected. A batch id is journaled on disk
  (``journal_dir``) as soon as it is submitted, so a killed run fetches that batch on restart
  instead of paying for it twice.
- Prompt caching: ``cache_control`` marks the shared instructions (system block) and the
  per-latent context (the explanation under test), so the thirty scoring calls of a latent
  re-read that prefix at 0.1x the input price. (The API caches only prefixes above a
  model-dependent minimum length, e.g. 1024 tokens for Sonnet.)
- Retries: our own loop (:mod:`.retry`) with exponential backoff, jitter and ``retry-after``
  honoured, for 408/409/429/5xx/529, timeouts, connection errors and malformed bodies; the
  SDK's own retries are off (``max_retries=0``) so attempts are counted once.
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
from typing import Any, Literal

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
from randsae.autointerp.pricing import Price, cost_usd
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


class _Journal:
    """Submitted-but-unfetched batch ids on disk, keyed by the set of request ids."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root) if root is not None else None

    def _path(self, ids: Sequence[str]) -> Path | None:
        if self.root is None:
            return None
        digest = hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:32]
        return self.root / f"{digest}.json"

    def lookup(self, ids: Sequence[str]) -> str | None:
        path = self._path(ids)
        if path is None or not path.is_file():
            return None
        try:
            return str(json.loads(path.read_text())["batch_id"])
        except (OSError, ValueError, KeyError):
            return None

    def record(self, ids: Sequence[str], batch_id: str) -> None:
        path = self._path(ids)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"batch_id": batch_id, "n_requests": len(ids), "created": time.time()}))
        os.replace(tmp, path)

    def remove(self, ids: Sequence[str]) -> None:
        path = self._path(ids)
        if path is not None:
            path.unlink(missing_ok=True)


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
        prompt_caching: bool = True,
        structured_output: bool = True,
        price: Price | None = None,
        journal_dir: str | Path | None = None,
        http_client: Any = None,
        env: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
    ) -> None:
        if mode not in ("messages", "batch"):
            raise ValueError(f"mode must be 'messages' or 'batch', not {mode!r}")
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
        self.prompt_caching = prompt_caching
        self.structured_output = structured_output
        self.price = price
        self._journal = _Journal(journal_dir)
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._redact = _Redactor(key)
        self._sdk = anthropic.Anthropic(
            api_key=key, base_url=base_url, timeout=timeout, max_retries=0, http_client=http_client
        )

    def __repr__(self) -> str:
        return f"AnthropicClient(model={self.model!r}, mode={self.mode!r})"

    def cache_identity(self) -> dict[str, Any]:
        return {"structured_output": self.structured_output}

    # ---------------------------------------------------------------- requests

    def request_params(self, prompt: Prompt, params: GenParams, schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The Messages API body for a prompt (also the ``params`` of a batch request)."""
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
            return RetryDecision(retryable, self._redact(reason)[:300], _retry_after(err.response.headers))
        if isinstance(err, anthropic.APIResponseValidationError | ValueError):
            return RetryDecision(True, "malformed response")
        return RetryDecision(False, self._redact(f"{type(err).__name__}: {err}")[:300])

    def _with_retries(self, fn: Callable[[], Any], what: str) -> Outcome[Any]:
        """``fn`` under the retry policy; a retry is logged with its (secret-free) reason."""
        def on_retry(attempt: int, d: RetryDecision, wait: float) -> None:
            log.warning("%s: attempt %d failed (%s); retrying in %.2fs", what, attempt, d.reason, wait)

        with self._rng_lock:
            rng = random.Random(self._rng.random())
        return call_with_retries(fn, self._classify, self.retry, rng=rng, sleep=self._sleep, on_retry=on_retry)

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
        if self.mode == "batch":
            return self._run_batch(bodies, on_result)
        return self._run_messages(bodies, on_result)

    def _one_message(self, body: dict[str, Any]) -> Completion:
        outcome = self._with_retries(lambda: self._sdk.messages.create(**body), "messages.create")
        if not outcome.ok:
            return Completion.failure(
                "api", outcome.reason, client=self.name, model=self.model, attempts=outcome.attempts, cost_usd=None
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
        ids = [self.custom_id(b) for b in bodies]
        where: dict[str, list[int]] = {}
        for i, cid in enumerate(ids):
            where.setdefault(cid, []).append(i)
        unique = list(where)
        results: list[Completion | None] = [None] * len(bodies)

        def emit(cid: str, completion: Completion) -> None:
            for i in where[cid]:
                results[i] = completion
                if on_result is not None:
                    on_result(i, completion)

        for start in range(0, len(unique), self.max_batch_requests):
            chunk = unique[start : start + self.max_batch_requests]
            requests = [{"custom_id": cid, "params": bodies[where[cid][0]]} for cid in chunk]
            for cid, completion in self._one_batch(chunk, requests).items():
                emit(cid, completion)
        return [r for r in results if r is not None]

    def _fail_all(self, ids: Sequence[str], reason: str) -> dict[str, Completion]:
        fail = Completion.failure("api", reason, client=self.name, model=self.model, batch=True, cost_usd=None)
        return dict.fromkeys(ids, fail)

    def _one_batch(self, ids: list[str], requests: list[dict[str, Any]]) -> dict[str, Completion]:
        batch_id = self._journal.lookup(ids)
        if batch_id is None:
            created = self._with_retries(
                lambda: self._sdk.messages.batches.create(requests=requests),  # type: ignore[arg-type]
                "batches.create",
            )
            if not created.ok:
                return self._fail_all(ids, f"batch submission failed: {created.reason}")
            batch_id = str(_value(created).id)
            self._journal.record(ids, batch_id)
            log.info("submitted message batch %s with %d requests", batch_id, len(ids))
        else:
            log.info("resuming message batch %s (%d requests)", batch_id, len(ids))
        deadline = time.monotonic() + self.max_batch_wait
        while True:
            status = self._with_retries(lambda: self._sdk.messages.batches.retrieve(batch_id), "batches.retrieve")
            if not status.ok:
                return self._fail_all(ids, f"batch {batch_id} status unavailable: {status.reason}")
            if _value(status).processing_status == "ended":
                break
            if time.monotonic() > deadline:
                return self._fail_all(ids, f"batch {batch_id} did not end within {self.max_batch_wait:.0f}s")
            self._sleep(self.poll_interval)
        fetched = self._with_retries(lambda: list(self._sdk.messages.batches.results(batch_id)), "batches.results")
        if not fetched.ok:
            return self._fail_all(ids, f"batch {batch_id} results unavailable: {fetched.reason}")
        out: dict[str, Completion] = {}
        wanted = set(ids)
        for entry in _value(fetched):
            cid = getattr(entry, "custom_id", None)
            if cid not in wanted or cid in out:
                continue
            out[cid] = self._batch_item(entry.result)
        for cid in ids:
            if cid not in out:
                out[cid] = Completion.failure(
                    "api", f"missing from batch {batch_id} results", client=self.name, model=self.model, batch=True
                )
        self._journal.remove(ids)
        return out

    def _batch_item(self, result: Any) -> Completion:
        kind = getattr(result, "type", "unknown")
        if kind == "succeeded":
            try:
                return self._to_completion(result.message, batch=True)
            except Exception as err:  # noqa: BLE001
                reason = f"unreadable batch result: {type(err).__name__}"
        elif kind == "errored":
            detail = getattr(getattr(result, "error", None), "error", None)
            etype, emsg = getattr(detail, "type", "error"), getattr(detail, "message", "")
            reason = self._redact(f"batch item errored: {etype}" + (f": {emsg}" if emsg else ""))[:300]
        else:
            reason = f"batch item {kind}"
        return Completion.failure("api", reason, client=self.name, model=self.model, batch=True, cost_usd=None)

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
            self.request_params(p, GenParams(max_tokens=64 + 24 * p.n_items), ANSWERS_SCHEMA) for p in prompts
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
