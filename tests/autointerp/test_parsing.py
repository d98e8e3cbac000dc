from __future__ import annotations

import pytest

from randsae.autointerp.parsing import (
    clean_explanation,
    parse_explanation,
    parse_stated_probabilities,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Some thoughts.\nExplanation: the word apple", "the word apple"),
        ("**Explanation:** fruit names\n", "fruit names"),
        ("Explanation: first\nmore\nexplanation: second", "second"),
        ('Here you go: {"explanation": "  fruit  words "}', "fruit words"),
        ('  "quoted answer"  ', None),
    ],
)
def test_parse_explanation(text: str, expected: str | None) -> None:
    r = parse_explanation(text)
    assert r.ok == (expected is not None)
    assert r.value == expected


def test_parse_explanation_failures_and_prefill() -> None:
    assert parse_explanation("").kind == "empty"
    assert parse_explanation("I'm sorry, but I can't help with that.").kind == "refusal"
    assert parse_explanation("no marker here").kind == "parse"
    assert parse_explanation(" the word apple\nand more", prefilled=True).value == "the word apple"
    assert parse_explanation("Explanation: I cannot do this").kind == "refusal"


def test_explanation_length_cap() -> None:
    s = clean_explanation("word " * 200, max_chars=50)
    assert len(s) <= 51 and s.endswith("…")


@pytest.mark.parametrize(
    "text",
    [
        '{"answers": [{"example": 1, "probability": 0.9}, {"example": 2, "probability": 0.1}, {"example": 3, "probability": 0.5}]}',
        'Sure!\n```json\n{"answers": [{"example": 3, "probability": 0.5}, {"example": 1, "probability": 0.9}, {"example": 2, "probability": 0.1}]}\n```',
        '{"1": 0.9, "2": "10%", "3": 50}',
        '{"probabilities": [0.9, 0.1, 0.5]}',
        "Example 1: 0.9\nExample 2: 0.1\nExample 3: 0.5",
    ],
)
def test_parse_stated_probabilities_shapes(text: str) -> None:
    r = parse_stated_probabilities(text, 3)
    assert r.ok and r.value == pytest.approx([0.9, 0.1, 0.5])


def test_parse_stated_probabilities_partial_and_invalid() -> None:
    r = parse_stated_probabilities('{"answers": [{"example": 1, "probability": 0.7}, {"example": 2, "probability": "high"}]}', 3)
    assert r.ok and r.value[0] == 0.7 and r.value[1] is None and r.value[2] is None
    assert "2 of 3" in r.reason
    assert parse_stated_probabilities("no numbers", 2).kind == "parse"
    assert parse_stated_probabilities("", 2).kind == "empty"
    assert parse_stated_probabilities("I cannot help with that.", 2).kind == "refusal"
    r = parse_stated_probabilities('{"answers": [{"example": 1, "probability": 250}, {"example": 2, "probability": -1}]}', 2)
    assert r.value == [None, None]
