"""The lexical scorer (no LLM): its exact definition, the own/control AUROCs it gives, its
determinism, the free-text path, the auto defaults that pick it, its keys, and its rows in
the results database after a real tiny pipeline run."""

from __future__ import annotations

import random

import duckdb
import pytest
from _helpers import tiny_config
from ai_helpers import make_bundle

from randsae.autointerp.explainers import TokenListExplainer, format_token_list, parse_token_list
from randsae.autointerp.lexical import (
    STOP_WORDS,
    content_words,
    lexical_probabilities,
    token_weights,
)
from randsae.autointerp.schema import score_rows
from randsae.autointerp.scorers import (
    CONTROL,
    OWN,
    DetectionScorer,
    LexicalScorer,
    make_scorer,
    score_latents,
    scorer_class,
    summarize_scores,
)
from randsae.autointerp.types import NON_ACTIVATING, Example, LatentExamples
from randsae.config import ConfigError, normalise
from randsae.enums import LEXICAL, LLM_SCORERS
from randsae.plan import build_plan

# ------------------------------------------------------------------------------ fixtures

BACKGROUND = ["the", "king", "went", "into", "a", "house", "and", "said", "unto", "them"]
TRIGGERS = ["apple", "river", "sword", "bread", "stone", "cloud"]


def _window(rng: random.Random, latent: int, activating: bool, quantile: int) -> Example:
    """A window of background words and other latents' trigger words (each latent's trigger is
    common everywhere except in its own non-activating windows); an activating window holds
    its own trigger once or twice, where the latent fires."""
    others = [t for i, t in enumerate(TRIGGERS) if i != latent]
    tokens = [" " + (rng.choice(others) if rng.random() < 0.3 else rng.choice(BACKGROUND)) for _ in range(16)]
    acts = [0.0] * 16
    if activating:
        for pos in rng.sample(range(16), rng.choice((1, 2))):
            tokens[pos] = " " + TRIGGERS[latent]
            acts[pos] = 1.0 + quantile + rng.random()
    return Example(tokens, acts, latent, quantile if activating else NON_ACTIVATING, activating)


def trigger_bundles(n: int = len(TRIGGERS), seed: int = 0) -> list[LatentExamples]:
    """Latent i is a pure token detector for TRIGGERS[i]."""
    out = []
    for lat in range(n):
        rng = random.Random(f"{seed}:{lat}")
        out.append(LatentExamples(
            latent=lat,
            explainer=[_window(rng, lat, True, i % 3) for i in range(8)],
            test=[_window(rng, lat, True, i % 3) for i in range(40)],
            non_activating=[_window(rng, lat, False, NON_ACTIVATING) for _ in range(40)],
        ))
    return out


def _ex(*tokens: str) -> Example:
    return Example(list(tokens), [0.0] * len(tokens), 0)


def _pooled(scores, source: str) -> float:
    row = next(r for r in summarize_scores(scores, n_boot=10) if r.latent is None and r.explanation_source == source)
    return row.summary.auroc


# ------------------------------------------------------------------------------ definition


def test_token_list_format_round_trips_and_free_text_is_not_a_list() -> None:
    toks = ("apple", "red", '"', "a,b")
    text = format_token_list(toks)
    assert text == 'the tokens "apple", "red", """, "a,b"' and parse_token_list(text) == toks
    assert TokenListExplainer().explain([make_bundle(0)])[0].explanation == format_token_list(["apple", "red"])
    for free in ("the word apple", 'the tokens "', 'the tokens ""', "tokens like apple", ""):
        assert parse_token_list(free) is None, free


def test_token_list_probability_is_the_covered_mass_share() -> None:
    owner = LatentExamples(0, explainer=[Example([" a", " b", " a", " c"], [2.0, 1.0, 1.0, 0.0], 0, 0, True)],
                           test=[], non_activating=[])
    assert token_weights(["a", "b"], owner) == {"a": 0.75, "b": 0.25}  # masses 3 and 1
    expl = format_token_list(["a", "b"])
    windows = [_ex(" b", " x"), _ex(" a", " b", " b"), _ex(" x", " c"), _ex(" A"), _ex("a ")]
    # b alone covers 1/4 -> (1 + 1/4) / 2; a repeated token counts once; case matters; whitespace does not
    assert lexical_probabilities(expl, windows, owner) == [0.625, 1.0, 0.0, 0.0, 0.875]
    # without the explanation's latent at hand, every listed token weighs 1/n
    assert lexical_probabilities(expl, windows[:1], None) == [0.75]
    assert token_weights(["a", "b", "a"], None) == {"a": 0.5, "b": 0.5}


def test_free_text_probability_is_the_shared_content_word_share() -> None:
    expl = "The word 'apple' in fruit contexts"
    assert content_words(expl) == {"apple", "fruit"} and {"the", "word", "in", "contexts"} <= STOP_WORDS
    windows = [_ex(" an", " apple", "."), _ex(" Fruit", " APPLE"), _ex(" apples"), _ex(" the", " word")]
    assert lexical_probabilities(expl, windows, None) == [0.75, 1.0, 0.0, 0.0]
    assert lexical_probabilities("the of and", windows, None) == [0.0] * 4  # no content word: no match


# ------------------------------------------------------------------------------ AUROCs


def test_own_token_list_explanation_gets_auroc_near_1_and_the_control_near_half() -> None:
    bundles = trigger_bundles()
    explanations = {r.latent: r.explanation for r in TokenListExplainer().explain(bundles) if r.ok}
    assert all(parse_token_list(explanations[b.latent])[0] == TRIGGERS[b.latent] for b in bundles)
    scores = score_latents(LexicalScorer(), bundles, explanations, control=True, seed=0)
    assert {s.explanation_source for s in scores} == {OWN, CONTROL}
    assert all(s.explanation_latent != s.latent for s in scores if s.explanation_source == CONTROL)
    assert _pooled(scores, OWN) > 0.95
    assert abs(_pooled(scores, CONTROL) - 0.5) < 0.1
    own = [s for s in scores if s.explanation_source == OWN]
    assert all(s.ok and len(s.examples) == 80 and s.n_prompts == 0 and s.cost_usd == 0.0 for s in own)
    assert {(e.client, e.model, e.ok) for s in scores for e in s.examples} == {("none", "lexical", True)}


def test_free_text_explanations_score_like_their_words() -> None:
    bundles = trigger_bundles()
    explanations = {b.latent: f"mentions of the word {TRIGGERS[b.latent]}" for b in bundles}
    scores = score_latents(LexicalScorer(), bundles, explanations, control=True, seed=0)
    assert _pooled(scores, OWN) > 0.95 and abs(_pooled(scores, CONTROL) - 0.5) < 0.1


def test_deterministic_across_runs_and_instances() -> None:
    bundles = trigger_bundles(seed=3)
    explanations = {r.latent: r.explanation for r in TokenListExplainer().explain(bundles)}
    a = score_rows(score_latents(LexicalScorer(), bundles, explanations, seed=1))
    b = score_rows(score_latents(make_scorer(LEXICAL), bundles, explanations, seed=1))
    assert a == b and len(a) == 2 * 6 * 80
    assert {r.probability for r in a} == {0.0, 1.0}  # one-token lists; not a constant, so the equality can fail


def test_rows_follow_the_detection_layout_and_a_missing_explanation_fails_cleanly() -> None:
    b = make_bundle(0, n_test=6, n_non=4)
    lex = LexicalScorer().score([b, make_bundle(1)], {0: format_token_list(["apple"])})
    assert [e.index for e in lex[0].examples] == list(range(10))
    assert [e.label for e in lex[0].examples] == [True] * 6 + [False] * 4
    assert [e.quantile for e in lex[0].examples] == [ex.quantile for ex in (*b.test, *b.non_activating)]
    assert all(e.prediction == (e.label) for e in lex[0].examples)  # apple is in every positive, no negative
    assert not lex[1].ok and lex[1].reason == "no explanation" and lex[1].examples == ()
    rows = score_rows(lex)
    assert len(rows) == 10 and {(r.scorer, r.client, r.model) for r in rows} == {("lexical", "none", "lexical")}


def test_make_scorer_and_clear_errors() -> None:
    assert isinstance(make_scorer("lexical"), LexicalScorer) and not scorer_class("lexical").needs_client
    assert scorer_class("detection") is DetectionScorer and DetectionScorer.needs_client
    with pytest.raises(ValueError, match="scorer 'detection' asks an LLM: it needs a client"):
        make_scorer("detection")
    with pytest.raises(ValueError, match="unknown scorer 'intruder'; known: detection, fuzzing, lexical"):
        make_scorer("intruder")


# ------------------------------------------------------------------------------ config and keys


def _ai(tmp_path, env, **over):
    cfg = tiny_config(tmp_path / "m", tmp_path / "s", **over)
    for key in ("explainer", "client", "local_model"):
        del cfg["autointerp"][key]
    cfg["autointerp"].update({k.removeprefix("autointerp."): v for k, v in over.items()})
    return normalise(cfg, env=env)["autointerp"]


def test_auto_defaults_follow_whether_an_llm_client_is_configured(tmp_path) -> None:
    no_llm = _ai(tmp_path, {})
    assert (no_llm["client"], no_llm["explainer"], no_llm["scorers"]) == ("local", "token_list", ["lexical"])
    keyed = _ai(tmp_path, {"ANTHROPIC_API_KEY": "x"})
    assert (keyed["client"], keyed["explainer"], keyed["scorers"]) == ("anthropic", "llm", list(LLM_SCORERS))
    local = _ai(tmp_path, {}, **{"autointerp.client": "local"})  # the user chose a local judge
    assert (local["explainer"], local["scorers"]) == ("llm", list(LLM_SCORERS))
    explicit = _ai(tmp_path, {}, **{"autointerp.scorers": ["detection", "lexical"], "autointerp.explainer": "llm"})
    assert (explicit["explainer"], explicit["scorers"]) == ("llm", ["detection", "lexical"])
    again = normalise({**tiny_config(tmp_path / "m", tmp_path / "s"), "autointerp": no_llm}, env={"ANTHROPIC_API_KEY": "x"})
    assert again["autointerp"]["scorers"] == ["lexical"]  # resolved values stay resolved


def test_bad_scorer_values_name_the_key_and_the_allowed_values(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"autointerp.scorers\[0\]: 'lexicon' is not allowed; allowed: "
                                          r"'detection', 'fuzzing', 'lexical'"):
        _ai(tmp_path, {}, **{"autointerp.scorers": ["lexicon"]})
    with pytest.raises(ConfigError, match=r"autointerp.scorers: 'lexical' is not allowed; give auto or a list of: "
                                          r"'detection', 'fuzzing', 'lexical'"):
        _ai(tmp_path, {}, **{"autointerp.scorers": "lexical"})
    with pytest.raises(ConfigError, match=r"autointerp.scorers: .*unique|autointerp.scorers: .*non-unique"):
        _ai(tmp_path, {}, **{"autointerp.scorers": ["lexical", "lexical"]})


def test_switching_the_llm_client_reruns_no_lexical_score(tmp_path) -> None:
    over = {"autointerp.scorers": ["lexical", "detection"], "autointerp.explainer": "token_list"}

    def keys(client: str) -> dict[str, str]:
        cfg = tiny_config(tmp_path / "m", tmp_path / "s", **over, **{"autointerp.client": client})
        plan = build_plan(normalise(cfg, env={}))
        return {a.name: a.key for a in plan if a.stage in ("explain", "score")}

    local, anthropic = keys("local"), keys("anthropic")
    lexical = {n for n in local if n.startswith("score/") and n.endswith("/lexical")}
    detection = {n for n in local if n.startswith("score/") and n.endswith("/detection")}
    assert lexical and detection
    assert all(local[n] == anthropic[n] for n in lexical | {n for n in local if n.startswith("explain/")})
    assert all(local[n] != anthropic[n] for n in detection)  # the LLM scorer's key does name its judge
    params = next(a.params for a in build_plan(normalise(tiny_config(tmp_path / "m", tmp_path / "s", **over), env={}))
                  if a.name in lexical)
    assert params == {"scorer": "lexical", "seed": 0}


def test_too_few_eligible_latents_says_how_many() -> None:
    from randsae.examples import ExampleParams, _selection_warnings

    (msg,) = _selection_warnings(7, ExampleParams(n_latents=100, min_activations=200))
    assert "autointerp.n_latents is 100 but only 7 latents are eligible (>= 200 activating windows each)" in msg
    assert _selection_warnings(100, ExampleParams(n_latents=100)) == []


def test_the_report_labels_a_smollm2_judge_a_plumbing_check() -> None:
    from randsae.results.report import judge_label

    assert "plumbing check" in judge_label("detection", "local", "smollm2-135m")
    assert "plumbing check" not in judge_label("detection", "anthropic", "claude-sonnet-5-5")
    assert "token-identity baseline" in judge_label("lexical", "none", "lexical")


# ------------------------------------------------------------------------------ pipeline


def test_lexical_rows_land_in_the_scores_table(tmp_path, tiny_model_dir) -> None:
    """A real tiny plan (trained variant only, token-list explanations, lexical scores) built
    stage by stage, then the database and the report."""
    from randsae.plan import execution_settings
    from randsae.results.db import build_database
    from randsae.results.report import render_report
    from randsae.stages import build
    from randsae.store import Store

    cfg = normalise(tiny_config(tiny_model_dir, tmp_path / "store", variants=["trained"],
                                **{"autointerp.scorers": ["lexical"]}))
    plan = build_plan(cfg)
    store = Store(cfg["store"])
    for a in plan:
        build(a.spec(), store, execution_settings(cfg, a.stage))
    db = build_database(cfg, store, tmp_path / "results" / "results.duckdb", n_boot=20, n_perm=20)
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.sql("SELECT scorer, client, llm_model, count(*), count(*) FILTER (WHERE probability IS NULL), "
                       "count(DISTINCT explanation_source) FROM scores GROUP BY ALL").fetchall()
        assert len(rows) == 1 and rows[0][:3] == ("lexical", "none", "lexical") and rows[0][3] > 0
        assert rows[0][4] == 0 and rows[0][5] == 2  # every example scored, own and control
        assert con.sql("SELECT count(*) FROM auroc WHERE scorer = 'lexical'").fetchall()[0][0] > 0
        usage = con.sql("SELECT count(*), coalesce(sum(input_tokens), 0) FROM llm_usage "
                        "WHERE artifact_stage = 'score'").fetchall()[0]
        assert usage[1] == 0  # no LLM tokens
    html = render_report(db, tmp_path / "report.html").read_text()
    assert "AUROC lex" in html and "lexical: no LLM" in html
