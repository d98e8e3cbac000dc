"""A local HuggingFace causal LM as explainer and judge.

Why: the pipeline must run offline and on a cluster without API access, and a local model
gives true answer probabilities. Scoring reads the next-token distribution over the answer
tokens directly, without generating: for a prompt with cues ``Example 1:`` ... ``Example 5:``
each item's probability is read right after its cue, so it is conditioned on all examples of
its prompt but not on the answers to the other items.

Batching shares work through one key/value cache in three stages: the token prefix common to
the whole batch (the instructions: prompts are grouped by them) runs once; each prompt's own
part (explanation and examples) once per prompt; then all cues of a prompt run side by side in
one row under a 4-D attention mask (each cue sees the prompt and itself). Sequences are left
padded with position ids computed from the attention mask, so a prompt's probabilities do not
depend on what it is batched with (tested to 1e-5 in fp32).

Model: a directory laid out like a Hub checkpoint, or a packaged model name (default
``smollm2-135m``, SmolLM2-135M-Instruct from a GGUF). Loading the GGUF dequantises it (~20 s),
so a converted copy is saved once under ``convert_dir`` (default
``$RANDSAE_CACHE/judges`` or ``~/.cache/randsae/judges``) and reused.
"""

from __future__ import annotations

import inspect
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from randsae.autointerp.clients import (
    DEFAULT_PARAMS,
    AnswerProbabilities,
    Completion,
    GenParams,
    ProbabilityMode,
    ResultCallback,
    Usage,
)
from randsae.autointerp.types import Prompt


def default_convert_dir() -> Path:
    root = os.environ.get("RANDSAE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "randsae") / "judges"


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def resolve_model_dir(model: str | Path, convert_dir: str | Path | None = None) -> Path:
    """A directory holding ``model`` as a HF checkpoint; converts a packaged GGUF once."""
    path = Path(model)
    if _is_model_dir(path):
        return path
    from randsae.models.sources import PACKAGED, load_model, load_tokenizer

    name = str(model)
    if name not in PACKAGED:
        raise ValueError(
            f"local judge model {name!r} is neither a model directory (with config.json) nor a "
            f"packaged model ({', '.join(sorted(PACKAGED))})"
        )
    target = Path(convert_dir or default_convert_dir()) / name
    if _is_model_dir(target):
        return target
    source = {"kind": "packaged", "name": name}
    model_obj = load_model(source, dtype=torch.float32)
    tokenizer = load_tokenizer(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        model_obj.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _is_model_dir(target):  # lost a race to another process: fine if it finished
            raise
    return target


class LocalClient:
    """A HuggingFace causal LM on the CPU or a GPU (see the module docstring)."""

    name = "local"
    probability_mode: ProbabilityMode = "logprobs"
    supports_prefill = True

    def __init__(
        self,
        model: str | Path = "smollm2-135m",
        *,
        convert_dir: str | Path | None = None,
        batch_size: int = 8,
        max_new_tokens: int = 64,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        model_name: str | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = resolve_model_dir(model, convert_dir)
        #: Recorded with every result: the packaged name, or the directory's name.
        self.model = model_name or (str(model) if not _is_model_dir(Path(model)) else Path(model).name)
        self.batch_size = max(1, batch_size)
        self.max_new_tokens = max_new_tokens
        self.device = torch.device(device)
        self.dtype = dtype
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        lm: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        self.lm = lm.to(self.device).eval()
        accepted = inspect.signature(self.lm.forward).parameters
        self._cache_kw = "cache" if "cache" in accepted else "past_key_values"
        # Only the last position's logits are ever read: skip the LM head elsewhere (for a 49k
        # vocabulary that head costs more than the transformer blocks of a small model).
        self._last_only: dict[str, Any] = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}
        self._choice_ids: dict[tuple[str, ...], list[list[int]]] = {}

    def cache_identity(self) -> dict[str, Any]:
        return {"dtype": str(self.dtype).removeprefix("torch.")}

    # ---------------------------------------------------------------- prompt rendering

    def render(self, prompt: Prompt, cue: str = "") -> str:
        """The prompt as the model sees it: its chat template when it has one, else a plain
        transcript; ``prefill``/``cue`` start the assistant's turn."""
        tail = prompt.prefill + (" " if prompt.prefill and cue else "") + cue
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.user_text}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return str(text) + tail
        return f"{prompt.system}\n\nUser:\n{prompt.user_text}\n\nAssistant:\n{tail}"

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ---------------------------------------------------------------- generation

    def complete(self, prompt: Prompt, params: GenParams = DEFAULT_PARAMS) -> Completion:
        return self.complete_many([prompt], params)[0]

    def complete_many(
        self, prompts: Sequence[Prompt], params: GenParams = DEFAULT_PARAMS, on_result: ResultCallback | None = None
    ) -> list[Completion]:
        """Greedy generation (deterministic, so the cache and a rerun agree)."""
        max_new = min(params.max_tokens, self.max_new_tokens) if self.max_new_tokens else params.max_tokens
        encoded = [self._encode(self.render(p)) for p in prompts]
        results: list[Completion | None] = [None] * len(prompts)
        for batch in self._batches(encoded):
            try:
                texts, n_out = self._generate([encoded[i] for i in batch], max_new, params.stop)
                outs = [
                    self._completion(t, Usage(len(encoded[i]), n)) for i, t, n in zip(batch, texts, n_out)
                ]
            except Exception as err:  # noqa: BLE001 - a failed batch is recorded, not raised
                reason = f"local generation failed: {type(err).__name__}: {err}"[:300]
                outs = [Completion.failure("api", reason, client=self.name, model=self.model) for _ in batch]
            for i, c in zip(batch, outs):
                results[i] = c
                if on_result is not None:
                    on_result(i, c)
        return [r for r in results if r is not None]

    def _completion(self, text: str, usage: Usage) -> Completion:
        if not text.strip():
            return Completion(text, False, "empty", "empty output", usage=usage, model=self.model, client=self.name)
        return Completion(text, usage=usage, model=self.model, client=self.name, stop_reason="end_turn")

    def _batches(self, encoded: Sequence[Sequence[int]], groups: Sequence[str] | None = None) -> list[list[int]]:
        """Indices grouped into batches of prompts with the same instructions (``groups``, so a
        batch shares their key/value cache) and similar length (less padding)."""
        order = sorted(range(len(encoded)), key=lambda i: (groups[i] if groups else "", len(encoded[i])))
        return [order[k : k + self.batch_size] for k in range(0, len(order), self.batch_size)]

    def _pad(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        pad = int(self.tokenizer.pad_token_id)
        ids = torch.tensor([[pad] * (width - len(s)) + list(s) for s in seqs], device=self.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=self.device)
        return ids, mask

    @torch.no_grad()
    def _generate(self, seqs: Sequence[Sequence[int]], max_new: int, stop: Sequence[str]) -> tuple[list[str], list[int]]:
        ids, mask = self._pad(seqs)
        eos = self.tokenizer.eos_token_id
        out = self.lm.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=eos,
        )
        new = out[:, ids.shape[1] :]
        texts: list[str] = []
        counts: list[int] = []
        for row in new.tolist():
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            text = str(self.tokenizer.decode(row, skip_special_tokens=True))
            for s in stop:
                if s and s in text:
                    text = text[: text.index(s)]
            texts.append(text)
            counts.append(len(row))
        return texts, counts

    # ---------------------------------------------------------------- answer probabilities

    def _answer_ids(self, cue_text: str, choices: Sequence[str]) -> list[list[int]]:
        """Token ids that spell each choice right after the cue ("1" and " 1" both count)."""
        # Tokenisation at the end of a text depends only on its last few words, so the tail
        # stands in for the whole (and keys the memo).
        cue_text = cue_text[-40:]
        key = (cue_text, *choices)
        if key in self._choice_ids:
            return self._choice_ids[key]
        base = self._encode(cue_text)
        out: list[list[int]] = []
        for c in choices:
            ids: set[int] = set()
            for variant in (c, " " + c):
                full = self._encode(cue_text + variant)
                if full[: len(base)] == base and len(full) == len(base) + 1:
                    ids.add(full[-1])
            if not ids:  # tokenizer merged across the cue boundary: fall back to the bare token
                bare = self._encode(c)
                ids.add(bare[0])
            out.append(sorted(ids))
        if len({tuple(x) for x in out}) < len(out):
            raise ValueError(f"choices {list(choices)} are not distinguishable with this tokenizer")
        self._choice_ids[key] = out
        return out

    def answer_probabilities(
        self,
        prompts: Sequence[Prompt],
        choices: Sequence[str] = ("0", "1"),
        on_result: ResultCallback | None = None,
    ) -> list[AnswerProbabilities]:
        """Per prompt and cue: P(choice) renormalised over the choices (each choice's mass is
        summed over its spellings with and without a leading space)."""
        results: list[AnswerProbabilities | None] = [None] * len(prompts)
        plans: list[tuple[list[int], list[list[int]], list[str]]] = []
        for i, p in enumerate(prompts):
            try:
                plans.append(self._plan(p))
            except ValueError as err:
                plans.append(([], [], []))
                results[i] = AnswerProbabilities(
                    (None,) * p.n_items, Completion.failure("parse", str(err), client=self.name, model=self.model)
                )
                if on_result is not None:
                    on_result(i, results[i])
        todo = [i for i in range(len(prompts)) if results[i] is None]
        for sub in self._batches([plans[i][0] for i in todo], [prompts[i].system for i in todo]):
            batch = [todo[j] for j in sub]
            try:
                dists = self._score_batch([plans[i] for i in batch], [prompts[i] for i in batch], choices)
                outs = [
                    AnswerProbabilities(
                        tuple(d),
                        Completion("", usage=Usage(len(plans[i][0]) + sum(len(s) for s in plans[i][1]), 0),
                                   model=self.model, client=self.name),
                    )
                    for i, d in zip(batch, dists)
                ]
            except Exception as err:  # noqa: BLE001
                reason = f"local scoring failed: {type(err).__name__}: {err}"[:300]
                outs = [
                    AnswerProbabilities(
                        (None,) * prompts[i].n_items,
                        Completion.failure("api", reason, client=self.name, model=self.model),
                    )
                    for i in batch
                ]
            for i, r in zip(batch, outs):
                results[i] = r
                if on_result is not None:
                    on_result(i, r)
        return [r for r in results if r is not None]

    def _plan(self, prompt: Prompt) -> tuple[list[int], list[list[int]], list[str]]:
        """(shared prefix ids, per-cue suffix ids, full cue texts). The shared prefix is the
        longest common token prefix of all cued texts, so tokenisation is exactly what a
        single pass over each full text would use."""
        cues = prompt.cues or ("",)
        texts = [self.render(prompt, cue) for cue in cues]
        full = [self._encode(t) for t in texts]
        n = min(len(f) for f in full) - 1  # every suffix keeps at least one token
        common = 0
        while common < n and all(f[common] == full[0][common] for f in full):
            common += 1
        if common == 0:
            raise ValueError("prompt too short: no tokens before its cues")
        return full[0][:common], [f[common:] for f in full], texts

    def _extend(
        self, cache: Any, mask: torch.Tensor | None, seqs: Sequence[Sequence[int]]
    ) -> tuple[Any, Any, torch.Tensor]:
        """Run left-padded ``seqs`` on top of a key/value cache whose rows are masked by
        ``mask``; positions continue from each row's real length. Returns (output, cache,
        mask of everything cached so far)."""
        ids, smask = self._pad(seqs)
        base = mask.sum(-1, keepdim=True) if mask is not None else 0
        full = torch.cat([mask, smask], dim=1) if mask is not None else smask
        pos = base + (smask.cumsum(-1) - 1).clamp(min=0)
        kw: dict[str, Any] = {self._cache_kw: cache} if cache is not None else {}
        out = self.lm(input_ids=ids, attention_mask=full, position_ids=pos, use_cache=True, **kw, **self._last_only)
        new_cache = out["cache"] if "cache" in out else out["past_key_values"]
        return out, new_cache, full

    def _cue_stage(
        self, cache: Any, mask: torch.Tensor, plans: Sequence[tuple[list[int], list[list[int]], list[str]]]
    ) -> torch.Tensor:
        """Log-probabilities after every cue, all cues of a prompt in one row.

        Rather than copying a prompt's key/value cache once per cue, its cues are laid side by
        side in one row with a 4-D attention mask: each cue token sees the prompt and the
        earlier tokens of its own cue only, and takes the positions it would have right after
        the prompt. Returns [n_cues_total, vocab] in plan order.
        """
        width = max(sum(len(s) for s in p[1]) for p in plans)
        pad = int(self.tokenizer.pad_token_id)
        ids, seg, off, ends = [], [], [], []
        for p in plans:
            toks: list[int] = []
            sg: list[int] = []
            of: list[int] = []
            for j, s in enumerate(p[1]):
                toks += s
                sg += [j] * len(s)
                of += list(range(len(s)))
            lead = width - len(toks)
            ids.append([pad] * lead + toks)
            seg.append([-1] * lead + sg)
            of_row = [0] * lead + of
            off.append(of_row)
            ends.append([lead + k for k in range(len(toks)) if k + 1 == len(toks) or sg[k + 1] != sg[k]])
        dev = self.device
        ids_t = torch.tensor(ids, device=dev)
        seg_t = torch.tensor(seg, device=dev)
        off_t = torch.tensor(off, device=dev)
        same = (seg_t[:, :, None] == seg_t[:, None, :]) & (seg_t[:, :, None] >= 0)
        new_ok = same & (off_t[:, None, :] <= off_t[:, :, None])
        past_ok = mask.bool()[:, None, :].expand(-1, width, -1)
        allowed = torch.cat([past_ok, new_ok], dim=-1)[:, None]
        dtype = self.lm.dtype
        mask4 = torch.zeros(allowed.shape, dtype=dtype, device=dev).masked_fill(~allowed, torch.finfo(dtype).min)
        pos = mask.sum(-1, keepdim=True) + off_t
        keep = sorted({e for row in ends for e in row})
        kw: dict[str, Any] = {}
        if self._last_only:
            kw["logits_to_keep"] = torch.tensor(keep, device=dev)
        out = self.lm(input_ids=ids_t, attention_mask=mask4, position_ids=pos, use_cache=True,
                      **{self._cache_kw: cache}, **kw)
        logits = out["logits"]
        col = {e: (i if self._last_only else e) for i, e in enumerate(keep)}
        picked = [logits[b, col[e]] for b, row in enumerate(ends) for e in row]
        return torch.log_softmax(torch.stack(picked).float(), dim=-1)

    @torch.no_grad()
    def _score_batch(
        self,
        plans: Sequence[tuple[list[int], list[list[int]], list[str]]],
        prompts: Sequence[Prompt],
        choices: Sequence[str],
    ) -> list[list[tuple[float, ...]]]:
        """Three stages over one key/value cache: the token prefix shared by the whole batch
        (typically the instructions) once; each prompt's own part (explanation, examples) once
        per prompt; all cues of a prompt in one row (:meth:`_cue_stage`)."""
        prefixes = [p[0] for p in plans]
        shared = 0
        shortest = min(len(p) for p in prefixes)
        while shared < shortest and all(p[shared] == prefixes[0][shared] for p in prefixes):
            shared += 1
        cache: Any = None
        mask: torch.Tensor | None = None
        if shared:
            _, cache, mask = self._extend(None, None, [prefixes[0][:shared]])
            cache.reorder_cache(torch.zeros(len(plans), dtype=torch.long, device=self.device))
            mask = mask.expand(len(plans), -1)
        middles = [p[shared:] for p in prefixes]
        if any(middles):
            _, cache, mask = self._extend(cache, mask, middles)
        assert mask is not None, "a prompt has no tokens before its cues"
        logp = self._cue_stage(cache, mask, plans)
        dists: list[tuple[float, ...]] = []
        texts = [t for p in plans for t in p[2]]
        for r, text in enumerate(texts):
            answer_ids = self._answer_ids(text, choices)
            mass = torch.stack([torch.logsumexp(logp[r, ids_], dim=0) for ids_ in answer_ids])
            probs = torch.softmax(mass, dim=0).tolist()
            dists.append(tuple(float(x) for x in probs))
        result: list[list[tuple[float, ...]]] = []
        k = 0
        for p in plans:
            result.append(dists[k : k + len(p[1])])
            k += len(p[1])
        return result
