"""Retries with exponential backoff and jitter, independent of any SDK.

Why our own loop: the number of attempts and the base delay must be configurable (tests use
millisecond delays), every attempt must be counted in the result, and the outcome of a call
that keeps failing must be a recorded failure, not an exception. The Anthropic SDK's own
retries are therefore switched off (``max_retries=0``) so attempts are not multiplied.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class RetryDecision:
    """How to treat one failed attempt: retry or give up, the server's requested wait, and a
    short, secret-free reason for logs and results."""

    retryable: bool
    reason: str
    retry_after: float | None = None
    #: the failure kind a call that ends here records (:func:`randsae.autointerp.clients.failure_class`)
    kind: str = "api"


@dataclass(frozen=True)
class RetryPolicy:
    """``max_attempts`` counts the first try. The delay before attempt ``n+1`` is drawn from
    [d/2, d] with ``d = min(max_delay, base_delay * 2**(n-1))`` ("equal jitter": keeps the
    exponential growth while spreading concurrent clients apart). A server ``retry-after`` is a
    lower bound on the wait (capped by ``max_retry_after``)."""

    max_attempts: int = 6
    base_delay: float = 1.0
    max_delay: float = 60.0
    max_retry_after: float = 900.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("delays must be >= 0")

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        d = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        wait = d / 2 + rng.uniform(0, d / 2)
        if retry_after is not None and retry_after > 0:
            wait = max(wait, min(retry_after, self.max_retry_after))
        return wait


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """The value of the last successful attempt, or ``None`` with the last failure's reason."""

    value: T | None
    ok: bool
    reason: str
    attempts: int
    kind: str = ""


def call_with_retries(
    fn: Callable[[], T],
    classify: Callable[[BaseException], RetryDecision],
    policy: RetryPolicy,
    *,
    rng: random.Random | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[int, RetryDecision, float], None] | None = None,
) -> Outcome[T]:
    """Call ``fn`` until it succeeds, a failure is not retryable, or attempts run out.

    Never raises for an exception ``fn`` raises (``Exception`` subclasses; KeyboardInterrupt
    still interrupts): the caller gets an :class:`Outcome` to record.
    """
    rng = rng or random.Random()
    decision = RetryDecision(False, "not attempted")
    for attempt in range(1, policy.max_attempts + 1):
        try:
            return Outcome(fn(), True, "", attempt)
        except Exception as err:  # noqa: BLE001 - every failure becomes a recorded outcome
            decision = classify(err)
        if not decision.retryable or attempt == policy.max_attempts:
            return Outcome(None, False, decision.reason, attempt, decision.kind)
        wait = policy.delay(attempt, decision.retry_after, rng)
        if on_retry is not None:
            on_retry(attempt, decision, wait)
        sleep(wait)
    return Outcome(None, False, decision.reason, policy.max_attempts, decision.kind)  # pragma: no cover
