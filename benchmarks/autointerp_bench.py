"""Auto-interp costs: local judge throughput, and API tokens per scored latent.

Part 1, local judge: detection prompts (5 examples of 32 tokens per prompt, logprobs mode) on a
small Llama built from config (default 6 layers, hidden 256, SmolLM2's 49152-token vocabulary;
tokenizer trained here), or with ``--smollm2`` on the packaged SmolLM2-135M-Instruct. Three
ways over the same prompts:

- naive: one full forward per (prompt, example) pair, one at a time: what a straightforward
  "read P(1) after 'Example i:'" implementation does;
- B=1: ``LocalClient(batch_size=1)``, one prompt at a time (its cues share its prefix);
- B=8, B=32: ``LocalClient(batch_size=B)``.

Goal: batched >= 4x one prompt at a time. Reported: judged examples per second and speedups,
from wall time and from this process's CPU time (which other processes on a shared machine
disturb less). Modes alternate; medians of the repeats; the slow naive reference runs once.

Part 2, Anthropic: explain + detection + fuzzing, own and control explanations, over latents with
the protocol defaults (40 explainer examples, 100 test over 10 quantiles, 50 non-activating,
32-token windows, 5 per prompt), in batch mode against the stub server
(tests/autointerp/stub_anthropic.py), which counts tokens as len(text)/4 and reports prompt-cache
reads and writes as the API does for a repeated cache_control prefix of >= 1024 tokens.
Reported: input tokens per scored latent, the share read from the prompt cache, and the cost
per latent from the price table (an estimate: real token counts and batch cache hits differ).

    python benchmarks/autointerp_bench.py [--prompts 32] [--batch 8 32] [--repeats 3] [--latents 10]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from randsae.autointerp.anthropic_client import DEFAULT_MODEL

REPO = Path(__file__).resolve().parents[1]
WORDS = [
    "the", "king", "went", "into", "a", "house", "and", "said", "unto", "them", "of", "land", "water",
    "light", "people", "city", "river", "day", "night", "word", "good", "great", "hand", "heart",
    "name", "earth", "heaven", "son", "father", "mother", "child", "voice", "fire", "stone", "gold",
]


def windows(rng: random.Random, n: int, window: int = 32, activating: bool = True):
    from randsae.autointerp.types import NON_ACTIVATING, Example

    out = []
    for i in range(n):
        toks = [" " + rng.choice(WORDS) for _ in range(window)]
        acts = [0.0] * window
        if activating:
            for pos in rng.sample(range(window), 3):
                toks[pos], acts[pos] = " apple", 1.0 + rng.random()
        out.append(Example(toks, acts, 0, (i % 10) if activating else NON_ACTIVATING, activating))
    return out


def bundle(latent: int, rng: random.Random):
    from randsae.autointerp.types import Example, LatentExamples

    def relabel(exs):
        return [Example(e.tokens, e.activations, latent, e.quantile, e.activating) for e in exs]

    return LatentExamples(latent, relabel(windows(rng, 40)), relabel(windows(rng, 100)),
                          relabel(windows(rng, 50, activating=False)))


def build_model_dir(path: Path, layers: int, hidden: int, vocab: int) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    from randsae.autointerp.prompts import EXPLAINER_SYSTEM, scorer_system

    corpus = [EXPLAINER_SYSTEM] + [scorer_system(k, m) for k in ("detection", "fuzzing") for m in ("stated", "logprobs")]
    corpus += [" ".join(WORDS + ["apple"])] * 50
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=1000, special_tokens=["<unk>", "<eos>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")
    cfg = LlamaConfig(vocab_size=max(vocab, len(tokenizer)), hidden_size=hidden, intermediate_size=4 * hidden,
                      num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                      num_key_value_heads=max(1, hidden // 64), max_position_embeddings=4096,
                      tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def naive(client, prompts) -> None:
    """One full forward per cue, one at a time (no prefix sharing, no batching)."""
    with torch.no_grad():
        for p in prompts:
            for cue in p.cues:
                ids = torch.tensor([client._encode(client.render(p, cue))])
                client.lm(input_ids=ids, logits_to_keep=1)


def forward_tokens(client, prompts, bs: int) -> int:
    """Token positions the judge's forwards process for ``prompts`` at batch size ``bs``
    (padding not counted): per batch, the prefix its prompts share once, each prompt's own
    part, and every cue. On a compute-bound CPU the speedup of batching cannot exceed the
    ratio of these counts."""
    plans = [client._plan(p) for p in prompts]
    total = 0
    old = client.batch_size
    client.batch_size = bs
    try:
        batches = client._batches([pl[0] for pl in plans], [p.system for p in prompts])
    finally:
        client.batch_size = old
    for batch in batches:
        prefixes = [plans[i][0] for i in batch]
        shared = 0
        while shared < min(map(len, prefixes)) and len({pre[shared] for pre in prefixes}) == 1:
            shared += 1
        total += shared + sum(len(pre) - shared for pre in prefixes)
        total += sum(len(cue) for i in batch for cue in plans[i][1])
    return total


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): CPU time is less disturbed by other
    processes sharing the machine."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def part1(args) -> None:
    from randsae.autointerp.local_client import LocalClient
    from randsae.autointerp.prompts import detection_prompt

    tmp = Path(tempfile.mkdtemp(prefix="aibench-"))
    if args.smollm2:  # the packaged judge, converted from its GGUF into tmp (about 20 s)
        t = time.perf_counter()
        client = LocalClient("smollm2-135m", convert_dir=tmp, batch_size=1)
        print(f"SmolLM2-135M-Instruct converted and loaded in {time.perf_counter() - t:.0f} s")
    else:
        client = LocalClient(build_model_dir(tmp / "judge", args.layers, args.hidden, args.vocab), batch_size=1)
    rng = random.Random(0)
    exs = windows(rng, args.prompts * 3) + windows(rng, args.prompts * 2, activating=False)
    rng.shuffle(exs)
    prompts = [detection_prompt(f"the word apple ({i})", exs[5 * i : 5 * i + 5], "logprobs") for i in range(args.prompts)]
    n_items = sum(p.n_items for p in prompts)
    n_tokens = [len(client._encode(client.render(p))) for p in prompts]
    cfg = client.lm.config
    print(f"local judge: {client.model}, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
          f"vocab {cfg.vocab_size}, "
          f"{len(prompts)} prompts x 5 examples, ~{statistics.mean(n_tokens):.0f} tokens per prompt, "
          f"{torch.get_num_threads()} threads")
    client.answer_probabilities(prompts[:2])  # warm-up
    results = {}

    def run(bs: int) -> None:
        client.batch_size = bs
        if bs == 1:
            results[bs] = [client.answer_probabilities([p])[0] for p in prompts]
        else:
            results[bs] = client.answer_probabilities(prompts)

    modes = [1, *args.batch]
    times: dict[str, list[tuple[float, float]]] = {}
    if not args.skip_naive:
        times["naive"] = [_timed(lambda: naive(client, prompts))]
    for _ in range(args.repeats):
        for bs in modes:
            times[f"B={bs}"] = [*times.get(f"B={bs}", []), _timed(lambda bs=bs: run(bs))]
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}
    base = med["B=1"]
    print(f"  {'mode':8s} {'wall s':>8s} {'CPU s':>8s} {'examples/s':>10s} {'speedup wall':>12s} {'speedup CPU':>11s}")
    for name, (w, c) in med.items():
        print(f"  {name:8s} {w:8.2f} {c:8.2f} {n_items / w:10.1f} {base[0] / w:11.2f}x {base[1] / c:10.2f}x")
    tokens_1 = forward_tokens(client, prompts, 1)
    for bs in args.batch:
        tokens_b = forward_tokens(client, prompts, bs)
        print(f"  B={bs}: forward tokens {tokens_b:,} vs {tokens_1:,} one prompt at a time: "
              f"token-count ceiling of the speedup {tokens_1 / tokens_b:.2f}x")
    for bs in args.batch:
        diff = max(abs(x - y) for ra, rb in zip(results[1], results[bs])
                   for da, db in zip(ra.probs, rb.probs) for x, y in zip(da, db))
        print(f"  max |P(B={bs}) - P(B=1)| = {diff:.1e}")
    print("  (B=1: one prompt at a time; naive: one full forward per example; medians of "
          f"{args.repeats} repeats, naive once)")


def part2(args) -> None:
    sys.path.insert(0, str(REPO / "tests" / "autointerp"))
    from stub_anthropic import StubAnthropic

    from randsae.autointerp.anthropic_client import AnthropicClient
    from randsae.autointerp.clients import Usage
    from randsae.autointerp.explainers import LLMExplainer
    from randsae.autointerp.pricing import cost_usd
    from randsae.autointerp.retry import RetryPolicy
    from randsae.autointerp.scorers import DetectionScorer, FuzzingScorer, score_latents

    stub = StubAnthropic(polls_before_end=0)
    try:
        client = AnthropicClient(args.model, mode="batch", base_url=stub.base_url, poll_interval=0.01,
                                 retry=RetryPolicy(base_delay=0.01), env={"ANTHROPIC_API_KEY": "stub-key"})
        rng = random.Random(1)
        bundles = [bundle(i, rng) for i in range(args.latents)]
        expl = LLMExplainer(client).explain(bundles)
        explanations = {r.latent: r.explanation for r in expl if r.ok}
        usage = {"explain": sum((r.usage for r in expl), Usage())}
        cost = {"explain": sum(r.cost_usd or 0 for r in expl)}
        for scorer in (DetectionScorer(client), FuzzingScorer(client)):
            res = score_latents(scorer, bundles, explanations, control=True)
            for src in ("own", "control"):
                part = [r for r in res if r.explanation_source == src]
                usage[f"{scorer.name}/{src}"] = sum((r.usage for r in part), Usage())
                cost[f"{scorer.name}/{src}"] = sum(r.cost_usd or 0 for r in part)
    finally:
        stub.close()
    n = args.latents
    print(f"\nAnthropic batch run on the stub: {n} latents, model {args.model} (batch price), "
          f"tokens estimated as chars/4")
    print(f"  {'call kind':18s} {'input tok/latent':>16s} {'cache read':>10s} {'cache write':>11s} "
          f"{'output tok/latent':>17s} {'USD/latent':>10s}")
    total_u, total_c = Usage(), 0.0
    for kind, u in usage.items():
        total_u, total_c = total_u + u, total_c + cost[kind]
        share = u.cache_read_tokens / max(1, u.total_input_tokens)
        print(f"  {kind:18s} {u.total_input_tokens / n:16.0f} {share:10.0%} "
              f"{u.cache_write_tokens / max(1, u.total_input_tokens):11.0%} {u.output_tokens / n:17.0f} "
              f"{cost[kind] / n:10.4f}")
    share = total_u.cache_read_tokens / max(1, total_u.total_input_tokens)
    no_cache = cost_usd(args.model, Usage(total_u.total_input_tokens, total_u.output_tokens), batch=True) or 0
    print(f"  {'total':18s} {total_u.total_input_tokens / n:16.0f} {share:10.0%} "
          f"{total_u.cache_write_tokens / max(1, total_u.total_input_tokens):11.0%} "
          f"{total_u.output_tokens / n:17.0f} {total_c / n:10.4f}")
    print(f"  estimated USD per latent: {total_c / n:.4f} with prompt caching, {no_cache / n:.4f} without "
          f"(x100 latents per SAE: {total_c * 100 / n:.2f} vs {no_cache * 100 / n:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--latents", type=int, default=10)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--skip-local", action="store_true")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--smollm2", action="store_true", help="judge with the packaged SmolLM2-135M-Instruct")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    import warnings

    warnings.filterwarnings("ignore", message="The model .* is deprecated")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.skip_local:
        part1(args)
    part2(args)


if __name__ == "__main__":
    main()
