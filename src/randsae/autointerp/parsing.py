"""Robust parsing of model output: explanations and stated probabilities.

Why separate and forgiving: model output is free text. Small local models ignore formats,
Claude may wrap JSON in prose or code fences, and corpus text echoed back may contain
look-alike markers. Parsers return ``None`` (with a reason) rather than raise, so one bad
response becomes one recorded failure.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Default cap on an explanation's length (characters).
MAX_EXPLANATION_CHARS = 300

_EXPL_LINE = re.compile(r"^[\s>*_#`\-]*\[?explanation\]?[\s*_`]*[:：]\s*(.*)$", re.IGNORECASE)
_REFUSAL = re.compile(
    r"^\s*(i'?m sorry|i am sorry|sorry,|i can(?:no|')t|i cannot|i won'?t|i will not|i'm unable|"
    r"i am unable|as an ai)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Parsed:
    """A parsed value or the reason there is none (``kind`` names the failure class)."""

    value: Any
    ok: bool
    kind: str = ""
    reason: str = ""


def _json_objects(text: str) -> list[Any]:
    """Every top-level JSON value embedded in ``text`` that starts with ``{``, in order."""
    out: list[Any] = []
    decoder = json.JSONDecoder()
    i = 0
    while (i := text.find("{", i)) != -1:
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i += 1
            continue
        out.append(obj)
        i = end
    return out


def clean_explanation(text: str, max_chars: int = MAX_EXPLANATION_CHARS) -> str:
    """One line, no wrapping quotes/markdown, at most ``max_chars`` (cut at a word boundary)."""
    s = " ".join(text.split())
    s = s.strip(" *_`\"'“”")
    if len(s) > max_chars:
        cut = s[:max_chars].rsplit(" ", 1)[0] if " " in s[:max_chars] else s[:max_chars]
        s = cut.rstrip(" ,;:") + "…"
    return s


def parse_explanation(text: str, *, prefilled: bool = False, max_chars: int = MAX_EXPLANATION_CHARS) -> Parsed:
    """The explanation in a model's reply.

    Order: a JSON object with an ``explanation`` field (the last one); the last line that
    starts with ``Explanation:``; with ``prefilled`` (the reply continues an assistant turn
    that already said "Explanation:"), the reply's first non-empty line. Anything else is
    unparseable (a refusal when it reads like one).
    """
    candidate: str | None = None
    for obj in reversed(_json_objects(text)):
        if isinstance(obj, dict) and isinstance(obj.get("explanation"), str):
            candidate = obj["explanation"]
            break
    if candidate is None:
        for line in reversed(text.splitlines()):
            m = _EXPL_LINE.match(line)
            if m and m.group(1).strip():
                candidate = m.group(1)
                break
    if candidate is None and prefilled:
        candidate = next((ln for ln in text.splitlines() if ln.strip()), None)
    if candidate is None:
        if not text.strip():
            return Parsed(None, False, "empty", "empty response")
        if _REFUSAL.match(text):
            return Parsed(None, False, "refusal", "the model declined")
        return Parsed(None, False, "parse", "no 'Explanation:' line or JSON explanation field")
    cleaned = clean_explanation(candidate, max_chars)
    if not cleaned:
        return Parsed(None, False, "empty", "empty explanation")
    if _REFUSAL.match(cleaned):
        return Parsed(None, False, "refusal", "the model declined")
    return Parsed(cleaned, True)


def _to_probability(value: Any) -> float | None:
    """0..1 as is, 1..100 as a percentage, "80%" too; anything else (incl. NaN, bools) -> None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        s = value.strip()
        pct = s.endswith("%")
        try:
            x = float(s.rstrip("%").strip())
        except ValueError:
            return None
        if pct:
            x /= 100.0
    elif isinstance(value, int | float):
        x = float(value)
    else:
        return None
    if not math.isfinite(x) or x < 0:
        return None
    if x > 1.0:
        x = x / 100.0 if x <= 100.0 else math.nan
    return x if math.isfinite(x) else None


def _item_number(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(?:example\s*)?(\d+)\s*", value, re.IGNORECASE)
        return int(m.group(1)) if m else None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


_PROB_KEYS = ("probability", "p", "prob", "score", "answer")


def _from_json(obj: Any, n_items: int) -> dict[int, float | None] | None:
    """Items (1-based) -> probability from the JSON shapes a judge plausibly returns."""
    if isinstance(obj, Mapping):
        for key in ("answers", "probabilities", "results", "examples"):
            if key in obj:
                return _from_json(obj[key], n_items)
        numbered = {_item_number(k): v for k, v in obj.items()}
        if numbered and all(k is not None for k in numbered):
            return {int(k): _to_probability(v) for k, v in numbered.items() if k is not None}
        return None
    if isinstance(obj, list):
        out: dict[int, float | None] = {}
        for pos, entry in enumerate(obj, start=1):
            if isinstance(entry, Mapping):
                num = next((_item_number(entry[k]) for k in ("example", "id", "index", "item") if k in entry), pos)
                val = next((entry[k] for k in _PROB_KEYS if k in entry), None)
                if num is not None and num not in out:
                    out[num] = _to_probability(val)
            else:
                out.setdefault(pos, _to_probability(entry))
        return out
    return None


_LINE_ANSWER = re.compile(
    r"(?:example|item|#)?\s*(\d+)\s*[:=\-–)]\s*\"?([0-9]*\.?[0-9]+\s*%?)", re.IGNORECASE
)


def parse_stated_probabilities(text: str, n_items: int) -> Parsed:
    """Per-item probabilities (1..n_items) stated in ``text``; missing items are ``None``.

    Accepts ``{"answers": [{"example": 1, "probability": 0.8}, ...]}``, ``{"1": 0.8, ...}``,
    ``{"probabilities": [0.8, ...]}`` (positional), JSON inside prose or code fences, and as a
    last resort lines like ``Example 1: 0.8``. Percentages (``80`` or ``"80%"``) are divided by
    100. ``ok`` is false when no item could be read at all.
    """
    found: dict[int, float | None] | None = None
    for obj in reversed(_json_objects(text)):
        found = _from_json(obj, n_items)
        if found:
            break
    if not found:
        found = {}
        for m in _LINE_ANSWER.finditer(text):
            k = int(m.group(1))
            if k not in found:
                found[k] = _to_probability(m.group(2))
    values = [found.get(i) for i in range(1, n_items + 1)]
    if all(v is None for v in values):
        if not text.strip():
            return Parsed(values, False, "empty", "empty response")
        if _REFUSAL.match(text):
            return Parsed(values, False, "refusal", "the model declined")
        return Parsed(values, False, "parse", "no probabilities found in the response")
    missing = sum(v is None for v in values)
    return Parsed(values, True, "", f"{missing} of {n_items} items unanswered" if missing else "")
