"""What a config will cost before anything runs: store size, GPU-hours, LLM dollars and the
peak device memory of each SAE training group (randsae issue 16, points 3 and 4).

Everything here is arithmetic over the config, the plan and one table of assumptions
(:class:`Assumptions`, every field with its doc and source). No model is loaded, no file is
read except a local model's config.json. The numbers are estimates: the throughput model is a
FLOP count divided by a stated fraction of a datasheet peak, not a measurement on a GPU (no GPU
was available to this project's benchmarks). docs/estimates.md explains each formula.

Whether a (model variant, train tokens) group caches its train activations or streams them
from the forward pass is asked of one function (:func:`group_is_cached`), which follows the
activations stage's own rule, so the estimate follows whatever that stage's ``expand`` plans.

Device memory (:func:`predict_group_memory`, :func:`check_fits`): a job that would not fit
refuses before it loads anything, with a message that names the settings to change.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from randsae.config import Config
from randsae.errors import RandsaeError

if TYPE_CHECKING:  # the plan imports every stage: typing only
    from randsae.plan import Plan
    from randsae.stage import Artifact

GB = 1000**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: The stages an LLM judge runs (left out of "everything but the LLM judge").
LLM_STAGES = ("explain", "score")


def _doc(text: str, source: str) -> dict[str, str]:
    return {"doc": text, "source": source}


# ---------------------------------------------------------------------------- assumptions


@dataclass(frozen=True)
class Accelerator:
    """Datasheet peaks of one accelerator (dense, i.e. without structured sparsity)."""

    name: str
    bf16_flops: float  # tensor-core peak for bf16/fp16 matmuls
    fp32_flops: float  # plain FP32 peak: torch's default for float32 matmuls (TF32 off)
    memory_bytes: int
    source: str

    def peak(self, dtype: str) -> float:
        return self.fp32_flops if dtype == "float32" else self.bf16_flops


A100 = Accelerator(
    "a100", 312e12, 19.5e12, 80 * 1024**3,
    "NVIDIA A100 Tensor Core GPU datasheet (80GB SXM): BF16 tensor core 312 TFLOPS (624 with "
    "sparsity), FP32 19.5 TFLOPS, 80 GB HBM2e")
H100 = Accelerator(
    "h100", 989.5e12, 67e12, 80 * 1024**3,
    "NVIDIA H100 Tensor Core GPU datasheet (SXM): BF16 tensor core 1,979 TFLOPS with sparsity, "
    "so 989.5 dense; FP32 67 TFLOPS; 80 GB HBM3")
ACCELERATORS: tuple[Accelerator, ...] = (A100, H100)


@dataclass(frozen=True)
class Assumptions:
    """Every number the estimates assume beyond the config. Printed by ``randsae plan``."""

    forward_mfu: float = field(default=0.40, metadata=_doc(
        "fraction of the datasheet peak a model forward reaches (inference, batches of "
        "thousands of tokens, SDPA attention)",
        "assumption: public LLM inference/training reports cluster at 0.3-0.5 MFU for "
        "large batches (e.g. the PaLM paper's 46% training MFU); not measured here (no GPU)"))
    sae_gemm_mfu: float = field(default=0.60, metadata=_doc(
        "fraction of the peak the SAE encoder GEMM reaches ([batch, d] x [d, latents], "
        "large and square enough for near-peak cuBLAS)",
        "assumption: cuBLAS reaches 60-80% of peak on GEMMs of thousands on each side; not "
        "measured here"))
    sae_step_over_gemm: float = field(default=2.0, metadata=_doc(
        "SAE training step time over the encoder GEMM alone (top-k, sparse decode and its "
        "backward, Adam, decoder renormalisation)",
        "benchmarks/README.md 'SAE update step': 1.43x measured for this trainer on CPU "
        "(fp32), sparsify 2.84x; GPUs make top-k and the memory-bound sparse passes "
        "relatively dearer, so 2.0 (a dense-backward trainer would be ~3x)"))
    sae_eval_dtype: str = field(default="float32", metadata=_doc(
        "dtype of the SAE encode in sae_metrics and latents", "randsae.stages.sae_metrics "
        "(sae_dtype=torch.float32)"))
    metrics_branches: int = field(default=3, metadata=_doc(
        "model passes after the hook layer in sae_metrics (clean, SAE-spliced, zero-ablated; "
        "the prefix up to the hook runs once)",
        "docs/metrics.md; benchmarks/README.md 'SAE metrics'"))
    activations_compression: float = field(default=1.0, metadata=_doc(
        "compression ratio assumed for stored activations (store size = raw / ratio)",
        "benchmarks/README.md 'Activation caching': lz4 bit-shuffle 1.17x on one bf16 layer, "
        "varying by variant and layer; none is assumed"))
    latents_compression: tuple[tuple[int, float], ...] = field(default=((32768, 1.597), (65536, 1.546), (262144, 1.451)), metadata=_doc(
        "(SAE latents, compression ratio) of a latent cache's Zarr arrays (ids, values, the "
        "by-latent index; Blosc/LZ4 bit-shuffle, randsae.zarr_io.default_compressors): store "
        "size = raw / ratio, interpolated in log2(latents) between the points (wider ids "
        "compress less); below the first point its ratio, above the last the last segment's "
        "slope, never under 1",
        "docs/estimates.md 'Latent cache size' (benchmarks/latents_size_bench.py): the "
        "stage's own writer at the paper's interp shape (9,999,872 rows, k 32), ids uniformly "
        "random and values spread over ten binary exponents, so a floor: a trained SAE's "
        "skewed firing makes its cache smaller"))
    hub_weight_bytes: int = field(default=2, metadata=_doc(
        "bytes per parameter of a model artifact from the hub (saved in the checkpoint's "
        "own dtype)", "the EleutherAI/pythia-*-deduped config.json files say torch_dtype "
        "float16; the model stage loads with dtype='auto'"))
    example_token_bytes: int = field(default=24, metadata=_doc(
        "bytes per token of an example window in examples.json (token text, id, activation, "
        "JSON punctuation)", "assumption from the LatentExamples JSON layout"))
    row_bytes: int = field(default=120, metadata=_doc(
        "bytes per row of a small Parquet table (explanations, scores, usage, metrics)",
        "assumption"))
    latents_spill_entry_bytes: int = field(default=10, metadata=_doc(
        "bytes per index entry of the latents stage's spill buckets while the by-latent "
        "index is built (the largest transient on disk)",
        "config/schema.yaml execution.latents.sort_budget (10 bytes each)"))
    sae_checkpoints_on_disk: int = field(default=3, metadata=_doc(
        "SAE checkpoints (weights and Adam m, v of every SAE of the job) on disk at once in a "
        "training job's partial directory",
        "randsae.sae.checkpoint.save_checkpoint: keeps 2, and writes the next before pruning"))
    forward_live_vectors: int = field(default=12, metadata=_doc(
        "[tokens, d_model] tensors alive at once in one block's inference forward "
        "(residual, QKV, attention output, 4d MLP hidden, slack); SDPA keeps no attention "
        "matrix", "assumption from the GPT-NeoX / Llama block structure"))
    stream_windows_held: int = field(default=2, metadata=_doc(
        "shuffle windows the streamed path holds on the device per layer (the current one "
        "and the next)", "randsae.sae.data: 'the current window plus one prefetched window'"))
    chars_per_token: float = field(default=4.0, metadata=_doc(
        "characters per LLM token when sizing prompts from randsae.autointerp.prompts",
        "the rule of thumb the stub in benchmarks/autointerp_bench.py uses"))
    window_text_tokens: float = field(default=1.3, metadata=_doc(
        "LLM tokens per model token of example text (escaped text, highlight markers)",
        "assumption; docs/autointerp.md 'Cost per latent' measured ~1,530 input tokens per "
        "judge call with 5 examples of 32 tokens"))
    explanation_output_tokens: int = field(default=250, metadata=_doc(
        "output tokens of one explanation call (a few sentences of reasoning, then the line)",
        "docs/autointerp.md 'Cost per latent': the stub's ~15 plus 100-300 for Claude"))
    explanation_tokens: int = field(default=20, metadata=_doc(
        "tokens of an explanation when it is put into a judge prompt", "assumption"))
    judge_output_tokens_per_example: int = field(default=10, metadata=_doc(
        "output tokens per judged example (one JSON entry)",
        "docs/autointerp.md: ~2,900 output tokens over 60 calls of 5 examples"))
    local_judge_mfu: float = field(default=0.25, metadata=_doc(
        "fraction of the peak a local judge reaches over prompts of ~1-3k tokens",
        "assumption: prefill-only scoring in small batches"))

    def rows(self) -> list[tuple[str, Any, str, str]]:
        """(name, value, doc, source) of every field, for printing."""
        return [(f.name, getattr(self, f.name), f.metadata["doc"], f.metadata["source"]) for f in fields(self)]


DEFAULT_ASSUMPTIONS = Assumptions()


# ---------------------------------------------------------------------------- model facts


class ModelFacts(NamedTuple):
    d_model: int
    n_blocks: int
    n_params: int  # all parameters (tied embeddings counted once)
    embedding_params: int  # input embedding and (untied) unembedding
    vocab: int
    weight_bytes: int  # bytes per parameter of the stored model artifact

    @property
    def block_params(self) -> float:
        return (self.n_params - self.embedding_params) / max(1, self.n_blocks)


# name -> (parameters, vocabulary, tied embeddings). Sources: the Pythia README's model table
# (total parameters) and config.json vocab_size; SmolLM2-135M's model card and config.
_KNOWN_PARAMS: dict[str, tuple[int, int, bool]] = {
    "smollm2-135m": (134_515_008, 49_152, True),
    "EleutherAI/pythia-70m": (70_426_624, 50_304, False),
    "EleutherAI/pythia-160m": (162_322_944, 50_304, False),
    "EleutherAI/pythia-410m": (405_334_016, 50_304, False),
    "EleutherAI/pythia-1b": (1_011_781_632, 50_304, False),
    "EleutherAI/pythia-6.9b": (6_857_302_016, 50_432, False),
}


def _ident(m: Mapping[str, Any]) -> str:
    src = m["source"]
    return str(src.get("name") or src.get("id") or "").removesuffix("-deduped")


def model_facts(cfg: Config, mname: str, a: Assumptions = DEFAULT_ASSUMPTIONS) -> ModelFacts | None:
    """Size facts of a configured model, or None when its width or depth is unknown."""
    from randsae.checks import model_shape

    m = cfg["models"][mname]
    shape = model_shape(m)
    if shape.d_model is None or shape.n_blocks is None:
        return None
    d, n = shape.d_model, shape.n_blocks
    known = _KNOWN_PARAMS.get(_ident(m))
    if known is not None:
        total, vocab, tied = known
        emb = vocab * d * (1 if tied else 2)
    else:
        hf = _local_config(m)
        vocab = int(hf.get("vocab_size") or 0)
        tied = bool(hf.get("tie_word_embeddings", True))
        d_mlp = int(hf.get("intermediate_size") or 4 * d)
        # attention 4 d^2 and a gated (3 d d_mlp) or plain (2 d d_mlp) MLP per block
        mlp = (3 if hf.get("model_type") in ("llama", "mistral", "qwen2") else 2) * d * d_mlp
        emb = vocab * d * (1 if tied else 2)
        total = n * (4 * d * d + mlp) + emb
    src_kind = m["source"]["kind"]
    weight_bytes = a.hub_weight_bytes if src_kind == "hub" else DTYPE_BYTES[m["dtype"]]
    return ModelFacts(d, n, total, emb, vocab, weight_bytes)


def _local_config(m: Mapping[str, Any]) -> dict[str, Any]:
    if m["source"]["kind"] != "local":
        return {}
    from randsae.inputs import local_revision_dir

    path = local_revision_dir(Path(m["source"]["path"]), m["source"].get("revision")) / "config.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def forward_flops_per_token(f: ModelFacts, blocks: int, ctx_len: int, head: bool = False) -> float:
    """2 FLOPs per parameter per token through ``blocks`` blocks, plus causal attention
    (QK^T and AV: 2 x d x ctx_len per block on average), plus the unembedding if ``head``."""
    per_block = 2 * f.block_params + 2 * ctx_len * f.d_model
    return blocks * per_block + (2 * f.vocab * f.d_model if head else 0)


def sae_params(d_model: int, n_latents: int) -> int:
    """Encoder with bias [L, d+1], decoder [L, d], decoder bias [d] (randsae.sae.model)."""
    return n_latents * (d_model + 1) + n_latents * d_model + d_model


# ---------------------------------------------------------------------------- caching


def group_is_cached(cfg: Config, plan: Plan, model: str, variant: str) -> bool:
    """Whether the (model variant, train tokens) group caches its train activations: the
    activations stage's rule says so (:func:`randsae.stages.activations.caches`: ``always``,
    ``never``, or ``auto`` under ``cache_budget_gb``) and the plan holds the artifacts. A
    streamed group stores no train activations; its SAE job runs the forward pass itself."""
    from randsae.stages.activations import caches

    planned = any(a.labels.get("model") == model and a.labels.get("variant") == variant
                  for a in plan.stage("activations"))
    return planned and caches(cfg, model)


def _train_rows(cfg: Config) -> int:
    s = cfg["corpus"]["splits"]["train"]
    return (s["tokens"] // s["ctx_len"]) * (s["ctx_len"] - int(cfg["activations"]["drop_first_position"]))


def _split_rows(cfg: Config, split: str) -> int:
    s = cfg["corpus"]["splits"][split]
    return (s["tokens"] // s["ctx_len"]) * (s["ctx_len"] - int(cfg["activations"]["drop_first_position"]))


def latents_compression(n_latents: int, a: Assumptions = DEFAULT_ASSUMPTIONS) -> float:
    """The latent cache's compression ratio at ``n_latents`` (see ``Assumptions.latents_compression``)."""
    pts = sorted(a.latents_compression)
    if n_latents <= pts[0][0] or len(pts) == 1:
        return pts[0][1]
    x = math.log2(n_latents)
    for (n0, r0), (n1, r1) in zip(pts, pts[1:]):
        if n_latents <= n1 or (n1, r1) == pts[-1]:
            x0, x1 = math.log2(n0), math.log2(n1)
            return max(1.0, r0 + (r1 - r0) * (x - x0) / (x1 - x0))
    raise AssertionError("unreachable")


def latent_cache_bytes(cfg: Config, k: int, n_latents: int, a: Assumptions = DEFAULT_ASSUMPTIONS) -> int:
    """Store bytes of one latent cache (randsae.latents): int32 id + fp16 value per slot, once
    per token for every row of the split (position 0 included: the arrays are [n_seq x ctx, k])
    and once by latent for the eligible rows (the index), compressed by ``latents_compression``;
    plus the uncompressed per-latent .npy arrays (offsets, fire counts, max, sum, sum of
    squares: 8 bytes each)."""
    s = cfg["corpus"]["splits"]["interp"]
    slots = (s["tokens"] // s["ctx_len"]) * s["ctx_len"] * k + _split_rows(cfg, "interp") * k
    return int(slots * (4 + 2) / latents_compression(n_latents, a)) + 5 * n_latents * 8


def _trained_tokens(cfg: Config, params: Mapping[str, Any]) -> int:
    """Tokens an SAE trains on: ``max_tokens`` if set (epochs over the split), else the split."""
    return int(params.get("max_tokens") or _train_rows(cfg))


# ---------------------------------------------------------------------------- memory


class SaeShape(NamedTuple):
    """What sizes one SAE of a training group on the device."""

    n_latents: int
    batch_size: int  # tokens per step (sae.batch_size)
    compute_dtype: str  # sae.dtype: dtype of the dense pre-activations


class MemoryEstimate(NamedTuple):
    """Predicted peak device memory of one SAE training job, in parts (bytes)."""

    group: str  # what the job trains, e.g. "sae pythia-70m/trained: 6 SAEs (streamed)"
    streamed: bool
    n_saes: int
    model_weights: int  # the model in its compute dtype (streamed path only)
    forward_batch: int  # one forward batch: live block tensors + hooked layers' outputs
    window_buffer: int  # the streamed path's shuffle windows, every layer of the group
    sae_state: int  # params + grads + Adam m and v, fp32 (16 bytes per parameter), every SAE
    sae_workspace: int  # per SAE: dense pre-activations of one batch (kept between steps)
    model: str = ""  # the configured model's name, for the advice
    devices: int = 1  # devices the job spreads its SAEs over (execution.sae.devices)
    per_device: int = 0  # the largest device's share (rank 0 holds the model); 0 = total

    @property
    def device_peak(self) -> int:
        """The memory the fullest device needs."""
        return self.per_device or self.total

    @property
    def total(self) -> int:
        return (self.model_weights + self.forward_batch + self.window_buffer + self.sae_state
                + self.sae_workspace)

    def parts(self) -> dict[str, int]:
        return {"model_weights": self.model_weights, "forward_batch": self.forward_batch,
                "window_buffer": self.window_buffer, "sae_state": self.sae_state,
                "sae_workspace": self.sae_workspace}


def predict_group_memory(
    *,
    group: str,
    d_model: int,
    saes: Sequence[SaeShape],
    streamed: bool,
    n_model_params: int = 0,
    model_dtype: str = "float32",
    hooked_layers: int = 1,
    forward_batch_tokens: int = 0,
    window_rows: int = 0,
    activations_dtype: str = "bfloat16",
    model: str = "",
    a: Assumptions = DEFAULT_ASSUMPTIONS,
) -> MemoryEstimate:
    """Peak device memory of one SAE training job.

    Every SAE of the group is trained at once (one pass over the stream), so their states add
    up. The cached path reads activations from the store: no model on the device. The streamed
    path holds the model (``n_model_params`` in ``model_dtype``), one forward batch of
    ``forward_batch_tokens`` tokens, and ``stream_windows_held`` shuffle windows of
    ``window_rows`` rows for each of ``hooked_layers`` layers."""
    state = sum(16 * sae_params(d_model, s.n_latents) for s in saes)
    workspace = sum(s.batch_size * s.n_latents * DTYPE_BYTES[s.compute_dtype]
                    + s.batch_size * (d_model + 1) * 4  # centred input with the bias column
                    for s in saes)
    weights = fwd = window = 0
    if streamed:
        mb = DTYPE_BYTES[model_dtype]
        weights = n_model_params * mb
        fwd = forward_batch_tokens * d_model * (mb * a.forward_live_vectors + 4 * hooked_layers)
        window = a.stream_windows_held * window_rows * d_model * DTYPE_BYTES[activations_dtype] * hooked_layers
    return MemoryEstimate(group, streamed, len(saes), weights, fwd, window, state, workspace, model)


class DeviceMemoryError(RandsaeError, MemoryError):
    """A job's predicted device memory exceeds the device's; raised before anything loads."""


def settings_to_change(est: MemoryEstimate) -> str:
    """The settings that shrink the largest parts of ``est``, largest part first."""
    m = f"models.{est.model}.layers" if est.model else "models.<name>.layers"
    advice = {
        "sae_state": f"a smaller sae.expansion, fewer SAEs per group (fewer sae.seeds, sae.k or sae.expansion "
                     f"values, or fewer {m})",
        "sae_workspace": "a smaller sae.batch_size (tokens per step) or sae.dtype: bfloat16",
        "window_buffer": f"a smaller sae.shuffle_buffer_tokens or fewer {m} per group, or cache the activations "
                         "(execution.activations.cache: always) so no model and window sit on the device",
        "forward_batch": "a smaller execution.sae.forward_batch_size (sequences per forward)",
        "model_weights": "a device with more memory, or cache the activations (execution.activations.cache: always)",
    }
    ranked = sorted(((v, k) for k, v in est.parts().items() if v > 0), reverse=True)
    lines = [advice[k] for _, k in ranked[:3]]
    return "; or ".join(lines) + "; or a device with more memory"


def check_fits(est: MemoryEstimate, device_bytes: int, what_to_change: str | None = None) -> None:
    """Raise :class:`DeviceMemoryError` when ``est`` does not fit in ``device_bytes``; the
    message gives the parts and the settings to change (default :func:`settings_to_change`)."""
    if est.total <= device_bytes:
        return
    parts = ", ".join(f"{k.replace('_', ' ')} {human_gib(v)}" for k, v in est.parts().items() if v)
    raise DeviceMemoryError(
        f"{est.group} needs about {human_gib(est.total)} of device memory ({parts}), more than the "
        f"{human_gib(device_bytes)} the device has; to fit, use {what_to_change or settings_to_change(est)}")


def device_memory_bytes(device: Any) -> int | None:
    """Total memory of a CUDA device, or None for the CPU (not checked: the OS pages)."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    return int(torch.cuda.get_device_properties(dev).total_memory)


def memory_for_specs(specs: Sequence[Mapping[str, Any]], model_dir: Path | None, *,
                     streamed_layers: Sequence[int] = (), forward_batch_seqs: int = 8,
                     ctx_len: int = 0) -> MemoryEstimate:
    """The prediction for one sae job from its specs (what the runner has before it loads
    anything): the width and the model's size from the model artifact's config.json and
    variant.json. ``streamed_layers``: the layers the job streams from a forward pass of
    ``forward_batch_seqs`` sequences of ``ctx_len`` tokens (empty: every layer is cached)."""
    first = specs[0]
    p0, lab0 = first["params"], first.get("labels", {})
    d_model = n_params = 0
    if model_dir is not None:
        hf = json.loads((Path(model_dir) / "config.json").read_text())
        d_model = int(hf.get("hidden_size") or hf.get("n_embd") or hf.get("d_model") or 0)
        variant = Path(model_dir) / "variant.json"
        n_params = int(json.loads(variant.read_text()).get("n_params", 0)) if variant.is_file() else 0
        weights = Path(model_dir) / "model.safetensors"
        if not n_params and weights.is_file():  # assume 2-byte stored weights
            n_params = weights.stat().st_size // 2
    if not d_model:
        raise ValueError(f"memory_for_specs: the width of the model in {model_dir} is unknown "
                         "(its config.json has no hidden_size)")
    saes = [SaeShape(int(s["params"]["expansion"]) * d_model, int(s["params"].get("batch_size", 4096)),
                     str(s["params"].get("dtype", "float32"))) for s in specs]
    streamed = bool(streamed_layers)
    return predict_group_memory(
        group=f"sae {lab0.get('model', '?')}/{lab0.get('variant', '?')}: {len(specs)} SAEs "
              f"({'streamed' if streamed else 'cached'})",
        d_model=d_model, saes=saes, streamed=streamed, n_model_params=n_params,
        model_dtype=str(p0.get("model_dtype", "float32")), hooked_layers=len(set(streamed_layers)),
        forward_batch_tokens=forward_batch_seqs * ctx_len,
        window_rows=int(p0.get("shuffle_buffer_tokens", 262144)),
        activations_dtype=str(p0.get("activations_dtype", "bfloat16")), model=str(lab0.get("model", "")))


def _sae_groups(plan: Plan) -> dict[str, list[Artifact]]:
    """The SAE training jobs: the sae stage's groups, or, while it declares none, one job per
    (model variant, train tokens) stream (the streaming design, randsae issue 16)."""
    from randsae.stages import stage_def

    stage = stage_def("sae")
    out: dict[str, list[Artifact]] = {}
    for art in plan.stage("sae"):
        gid = stage.group(art) if stage.group else f"{art.labels['model']}/{art.labels['variant']}"
        out.setdefault(gid, []).append(art)
    return out


def _forward_batch_seqs(cfg: Config) -> int:
    ex = cfg["execution"]
    return int(ex.get("sae", {}).get("forward_batch_size") or ex.get("activations", {}).get("batch_size", 8))


def device_split(est: MemoryEstimate, sae_costs: Sequence[int], setting: int | str) -> MemoryEstimate:
    """``est`` spread over the devices ``execution.sae.devices`` asks for (``auto``: the fewest
    80 GiB devices on which every share fits, one if none does; a set count: at most one per SAE): each SAE
    goes to one device (:func:`randsae.sae_devices.assign`), rank 0 also holds the model, the
    forward batch and the windows."""
    from randsae.sae_devices import AUTO_DEVICE_BYTES, assign, fewest_devices, rank_loads

    base0 = est.model_weights + est.forward_batch + est.window_buffer
    if setting == "auto":
        n = fewest_devices(sae_costs, base0, AUTO_DEVICE_BYTES) or 1
    else:
        n = max(1, min(int(setting), len(sae_costs)))
    if n == 1:
        return est._replace(devices=1, per_device=est.total)
    base = [base0] + [0] * (n - 1)
    return est._replace(devices=n, per_device=max(rank_loads(sae_costs, assign(sae_costs, n, base), base)))


def sae_group_memory(cfg: Config, plan: Plan, arts: Sequence[Artifact],
                     a: Assumptions = DEFAULT_ASSUMPTIONS) -> MemoryEstimate | None:
    """The prediction for the sae job training ``arts`` (one group), split over the devices the
    config asks for; None when the model's width is unknown."""
    ctx = cfg["corpus"]["splits"]["train"]["ctx_len"]
    lab = arts[0].labels
    f = model_facts(cfg, lab["model"], a)
    if f is None:
        return None
    streamed = not group_is_cached(cfg, plan, lab["model"], lab["variant"])
    saes = [SaeShape(x.params["expansion"] * f.d_model, x.params["batch_size"], x.params["dtype"]) for x in arts]
    layers = {x.labels["layer"] for x in arts}
    n = len(arts)
    est = predict_group_memory(
        group=f"sae {lab['model']}/{lab['variant']}: {n} SAE{'s' if n > 1 else ''} "
              f"({'streamed' if streamed else 'cached'})",
        d_model=f.d_model, saes=saes, streamed=streamed, n_model_params=f.n_params,
        model_dtype=cfg["models"][lab["model"]]["dtype"], hooked_layers=len(layers),
        forward_batch_tokens=_forward_batch_seqs(cfg) * ctx,
        window_rows=arts[0].params.get("shuffle_buffer_tokens", 262144),
        activations_dtype=cfg["activations"]["dtype"], model=lab["model"], a=a)
    costs = [predict_group_memory(group="", d_model=f.d_model, saes=[s], streamed=False, a=a).total for s in saes]
    return device_split(est, costs, cfg["execution"].get("sae", {}).get("devices", 1))


def plan_group_memory(cfg: Config, plan: Plan, a: Assumptions = DEFAULT_ASSUMPTIONS) -> list[MemoryEstimate]:
    """The prediction of every SAE training job of the plan (the fullest device first); groups
    of a model of unknown width are left out."""
    out = [e for arts in _sae_groups(plan).values() if (e := sae_group_memory(cfg, plan, arts, a)) is not None]
    return sorted(out, key=lambda e: -e.device_peak)


# ---------------------------------------------------------------------------- stages


class StageEstimate(NamedTuple):
    """One stage's share. None where a model's width is unknown or (LLM) a price is."""

    stage: str
    jobs: int
    store_bytes: int | None  # kept at the end
    transient_bytes: int | None  # largest extra on disk while one job runs (partial work)
    gpu_hours: dict[str, float | None]  # accelerator name -> hours
    llm_cost_usd: float | None  # Anthropic stages only


class Estimates(NamedTuple):
    stages: tuple[StageEstimate, ...]
    disk_peak_bytes: int | None
    gpu_hours: dict[str, float | None]
    gpu_hours_without_judge: dict[str, float | None]
    llm_cost_usd: float | None  # None unless the client is anthropic (or its price is unknown)
    largest_group: MemoryEstimate | None
    assumptions: Assumptions

    def to_json(self) -> dict[str, Any]:
        g = self.largest_group
        return {
            "disk_peak_bytes": self.disk_peak_bytes,
            "gpu_hours": self.gpu_hours,
            "gpu_hours_without_judge": self.gpu_hours_without_judge,
            "llm_cost_usd": self.llm_cost_usd,
            "stages": {s.stage: {"jobs": s.jobs, "store_bytes": s.store_bytes, "transient_bytes": s.transient_bytes,
                                 "gpu_hours": s.gpu_hours, "llm_cost_usd": s.llm_cost_usd} for s in self.stages},
            "largest_group_memory": None if g is None else {
                "group": g.group, "total_bytes": g.total, **{f"{k}_bytes": v for k, v in g.parts().items()},
                "devices": g.devices, "device_peak_bytes": g.device_peak,
                "fits": {acc.name: g.device_peak <= acc.memory_bytes for acc in ACCELERATORS}},
            "accelerators": {acc.name: {"bf16_flops": acc.bf16_flops, "fp32_flops": acc.fp32_flops,
                                        "memory_bytes": acc.memory_bytes, "source": acc.source} for acc in ACCELERATORS},
            "assumptions": {name: {"value": value, "doc": doc, "source": source}
                            for name, value, doc, source in self.assumptions.rows()},
        }


class _Work:
    """FLOPs of one stage by the dtype they run in, and its bytes; None once unknown."""

    def __init__(self) -> None:
        self.flops: dict[str, float] | None = {}
        self.store: int | None = 0
        self.transient: int | None = 0

    def add_flops(self, dtype: str, flops: float, mfu: float) -> None:
        if self.flops is not None:
            key = f"{'float32' if dtype == 'float32' else 'bfloat16'}@{mfu}"
            self.flops[key] = self.flops.get(key, 0.0) + flops

    def add_store(self, n: int) -> None:
        if self.store is not None:
            self.store += int(n)

    def peak_transient(self, n: int) -> None:
        if self.transient is not None:
            self.transient = max(self.transient, int(n))

    def unknown(self) -> None:
        self.flops = None
        self.store = None
        self.transient = None

    def unknown_compute(self) -> None:
        self.flops = None

    def hours(self) -> dict[str, float | None]:
        if self.flops is None:
            return {acc.name: None for acc in ACCELERATORS}
        out: dict[str, float | None] = {}
        for acc in ACCELERATORS:
            secs = 0.0
            for key, fl in self.flops.items():
                dtype, mfu = key.split("@")
                secs += fl / (acc.peak(dtype) * float(mfu))
            out[acc.name] = secs / 3600
        return out


def _jobs(plan: Plan, stage_name: str) -> int:
    from randsae.stages import stage_def

    if stage_name == "sae":
        return len(_sae_groups(plan))
    stage = stage_def(stage_name)
    arts = plan.stage(stage_name)
    return len({stage.group(x) for x in arts}) if stage.group else len(arts)


def _without_streamed(cfg: Config, plan: Plan) -> Plan:
    """The plan without the activations of groups that stream (:func:`group_is_cached`)."""
    from randsae.plan import Plan as PlanType

    return PlanType(x for x in plan if x.stage != "activations"
                    or group_is_cached(cfg, plan, x.labels["model"], x.labels["variant"]))


def estimate(cfg: Config, plan: Plan, a: Assumptions = DEFAULT_ASSUMPTIONS) -> Estimates:
    """Jobs, store bytes, GPU-hours (A100, H100) and LLM cost of every stage of ``plan``."""
    from randsae.plan import stage_names

    plan = _without_streamed(cfg, plan)
    facts = {m: model_facts(cfg, m, a) for m in cfg["models"]}
    work = {s: _Work() for s in stage_names()}
    cost: dict[str, float | None] = {}
    _model_and_tokens(cfg, plan, facts, work, a)
    _activations_and_sae(cfg, plan, facts, work, a)
    _metrics_and_latents(cfg, plan, facts, work, a)
    _autointerp(cfg, plan, work, cost, a)
    stages = tuple(StageEstimate(s, _jobs(plan, s), w.store, w.transient, w.hours(), cost.get(s))
                   for s, w in work.items())
    final = _sum(s.store_bytes for s in stages)
    transient = _max(s.transient_bytes for s in stages)
    peak = None if final is None or transient is None else final + transient
    hours = {acc.name: _fsum(s.gpu_hours[acc.name] for s in stages) for acc in ACCELERATORS}
    no_judge = {acc.name: _fsum(s.gpu_hours[acc.name] for s in stages if s.stage not in LLM_STAGES)
                for acc in ACCELERATORS}
    llm = None
    if cfg["autointerp"]["client"] == "anthropic":
        llm = _fsum(cost.get(s) for s in LLM_STAGES if s in work)
    groups = plan_group_memory(cfg, plan, a)  # on the plan without streamed activations
    return Estimates(stages, peak, hours, no_judge, llm, groups[0] if groups else None, a)


def _sum(xs: Iterable[int | None]) -> int | None:
    total = 0
    for x in xs:
        if x is None:
            return None
        total += x
    return total


def _max(xs: Iterable[int | None]) -> int | None:
    vals = list(xs)
    return None if any(x is None for x in vals) else max([x for x in vals if x is not None], default=0)


def _fsum(xs: Iterable[float | None]) -> float | None:
    total = 0.0
    for x in xs:
        if x is None:
            return None
        total += x
    return total


def _model_and_tokens(cfg: Config, plan: Plan, facts: Mapping[str, ModelFacts | None], work: dict[str, _Work],
                      a: Assumptions) -> None:
    for art in plan.stage("model"):
        f = facts[art.labels["model"]]
        if f is None:
            work["model"].unknown()
            continue
        work["model"].add_store(f.n_params * f.weight_bytes)
    for art in plan.stage("tokens"):
        s = cfg["corpus"]["splits"][art.labels["split"]]
        work["tokens"].add_store((s["tokens"] // s["ctx_len"]) * s["ctx_len"] * 5)  # int32 ids + uint8 starts


def _activations_and_sae(cfg: Config, plan: Plan, facts: Mapping[str, ModelFacts | None], work: dict[str, _Work],
                         a: Assumptions) -> None:
    train = cfg["corpus"]["splits"]["train"]
    act_bytes = DTYPE_BYTES[cfg["activations"]["dtype"]]
    rows = _train_rows(cfg)
    for art in plan.stage("activations"):
        f = facts[art.labels["model"]]
        if f is None:
            work["activations"].unknown()
            continue
        work["activations"].add_store(int(rows * f.d_model * act_bytes / a.activations_compression))
    # one forward over the train split per (model variant): in the activations stage when the
    # group caches, inside the SAE job when it streams
    for (mname, variant), arts in _by_model_variant(plan.stage("sae")).items():
        f = facts[mname]
        if f is None:
            work["sae"].unknown()
            continue
        deepest = max(x.labels["layer"] for x in arts) + 1
        dtype = cfg["models"][mname]["dtype"]
        fwd_tokens = (train["tokens"] // train["ctx_len"]) * train["ctx_len"]
        if not group_is_cached(cfg, plan, mname, variant):
            # the stream covers as many passes over the split as its longest-training SAE needs
            passes = max(_trained_tokens(cfg, x.params) for x in arts) / rows
            fwd_tokens = int(fwd_tokens * passes)
        stage = "activations" if group_is_cached(cfg, plan, mname, variant) else "sae"
        work[stage].add_flops(dtype, fwd_tokens * forward_flops_per_token(f, deepest, train["ctx_len"]), a.forward_mfu)
        for x in arts:
            n_lat = x.params["expansion"] * f.d_model
            gemm = 2 * f.d_model * n_lat * _trained_tokens(cfg, x.params)
            work["sae"].add_flops(x.params["dtype"], gemm * a.sae_step_over_gemm, a.sae_gemm_mfu)
            work["sae"].add_store(sae_params(f.d_model, n_lat) * 4 + 64 * 1024)  # + cfg, log, summary
    for arts in _sae_groups(plan).values():
        f = facts[arts[0].labels["model"]]
        if f is not None:  # checkpoints (weights, Adam m and v) of every SAE of the job
            ck = sum(12 * sae_params(f.d_model, x.params["expansion"] * f.d_model) for x in arts)
            work["sae"].peak_transient(a.sae_checkpoints_on_disk * ck)


def _by_model_variant(arts: Iterable[Artifact]) -> dict[tuple[str, str], list[Artifact]]:
    out: dict[tuple[str, str], list[Artifact]] = {}
    for x in arts:
        out.setdefault((x.labels["model"], x.labels["variant"]), []).append(x)
    return out


def _metrics_and_latents(cfg: Config, plan: Plan, facts: Mapping[str, ModelFacts | None], work: dict[str, _Work],
                         a: Assumptions) -> None:
    splits = cfg["corpus"]["splits"]
    for stage, split in (("sae_metrics", "eval"), ("latents", "interp")):
        ctx = splits[split]["ctx_len"]
        tokens = (splits[split]["tokens"] // ctx) * ctx
        if stage == "sae_metrics" and cfg["metrics"]["max_tokens"]:
            tokens = min(tokens, max(1, cfg["metrics"]["max_tokens"] // ctx) * ctx)
        for art in plan.stage(stage):
            f = facts[art.labels["model"]]
            if f is None:
                work[stage].unknown()
                continue
            layer = art.labels["layer"] + 1
            n_lat = art.labels["expansion"] * f.d_model
            dtype = cfg["models"][art.labels["model"]]["dtype"]
            if stage == "sae_metrics":
                rest = forward_flops_per_token(f, f.n_blocks - layer, ctx, head=True)
                model_fl = forward_flops_per_token(f, layer, ctx) + a.metrics_branches * rest
                work[stage].add_store(n_lat * 8 + 2 * a.row_bytes + 16 * 1024)
            else:
                model_fl = forward_flops_per_token(f, layer, ctx)
                work[stage].add_store(latent_cache_bytes(cfg, art.labels["k"], n_lat, a))
                work[stage].peak_transient(_split_rows(cfg, "interp") * art.labels["k"] * a.latents_spill_entry_bytes)
            work[stage].add_flops(dtype, tokens * model_fl, a.forward_mfu)
            work[stage].add_flops(a.sae_eval_dtype, tokens * 2 * f.d_model * n_lat, a.sae_gemm_mfu)
    ai = cfg["autointerp"]
    per_latent = (ai["explainer_examples"] + ai["test_examples"] + ai["non_activating"]) * ai["window"]
    for art in plan.stage("examples"):
        f = facts[art.labels["model"]]
        n_lat = art.labels["expansion"] * f.d_model if f else 0
        work["examples"].add_store(ai["n_latents"] * per_latent * a.example_token_bytes + n_lat * a.row_bytes)


# ---------------------------------------------------------------------------- LLM stages


class PromptSizes(NamedTuple):
    """LLM tokens of the auto-interp calls of one latent, sized from the real prompts."""

    explain_input: float  # one explanation call
    explain_output: float
    judge_calls: int  # per scorer: own and control explanations
    judge_prefix: float  # system instructions + explanation (cacheable) per call
    judge_user: float  # the examples block per call
    judge_output: float  # per call


def prompt_sizes(ai: Mapping[str, Any], a: Assumptions = DEFAULT_ASSUMPTIONS) -> PromptSizes:
    """Token counts from the prompt texts of :mod:`randsae.autointerp.prompts` (characters /
    ``chars_per_token``) and the protocol sizes in the config."""
    from randsae.autointerp import prompts
    from randsae.enums import DETECTION

    per_example_text = ai["window"] * a.window_text_tokens
    tag = len('<example id="10"></example>\n') / a.chars_per_token
    # the window, then its marked tokens with strengths (about 0.6x the text again; calibrated
    # to the ~3,200 input tokens per explanation of docs/autointerp.md "Cost per latent")
    explain_example = 1.6 * per_example_text + 2 * tag
    explain_in = len(prompts.EXPLAINER_SYSTEM) / a.chars_per_token + ai["explainer_examples"] * explain_example
    epp = ai["examples_per_prompt"]
    calls = 2 * math.ceil((ai["test_examples"] + ai["non_activating"]) / epp)  # own + control
    system = len(prompts.scorer_system(DETECTION, "stated")) / a.chars_per_token
    prefix = system + a.explanation_tokens
    user = epp * (per_example_text + tag) + 10
    out = epp * a.judge_output_tokens_per_example + 5
    return PromptSizes(explain_in, a.explanation_output_tokens, calls, prefix, user, out)


def llm_cost_per_latent(ai: Mapping[str, Any], batch: Mapping[str, bool], a: Assumptions = DEFAULT_ASSUMPTIONS
                        ) -> dict[str, float] | None:
    """USD per sampled latent of explain and of one LLM scorer with the Anthropic client,
    at the price of ``autointerp.anthropic_model`` (randsae.autointerp.pricing); None when the
    model has no price. Judge calls of one explanation share a cached prefix: the first call
    writes it (1.25x), the rest read it (0.1x)."""
    from randsae.autointerp.pricing import BATCH_MULTIPLIER, CACHE_WRITE_MULTIPLIER, price_for

    price = price_for(ai["anthropic_model"])
    if price is None:
        return None
    s = prompt_sizes(ai, a)
    pin, pout = price.input_per_mtok / 1e6, price.output_per_mtok / 1e6
    explain = s.explain_input * pin + s.explain_output * pout
    writes = 2 * s.judge_prefix  # one per explanation (own, control)
    reads = (s.judge_calls - 2) * s.judge_prefix
    judge = (writes * pin * CACHE_WRITE_MULTIPLIER + reads * pin * price.cache_read_multiplier
             + s.judge_calls * (s.judge_user * pin + s.judge_output * pout))
    return {"explain": explain * (BATCH_MULTIPLIER if batch["explain"] else 1.0),
            "score": judge * (BATCH_MULTIPLIER if batch["score"] else 1.0)}


def _asks_llm(art: Artifact) -> bool:
    """Whether an explain or score artifact calls an LLM (the token-list explainer and the
    lexical scorer do not; their keys name no client)."""
    if art.stage == "explain":
        return art.params.get("explainer") == "llm"
    return "client" in art.params


def _autointerp(cfg: Config, plan: Plan, work: dict[str, _Work], cost: dict[str, float | None],
                a: Assumptions) -> None:
    ai = cfg["autointerp"]
    s = prompt_sizes(ai, a)
    n = ai["n_latents"]
    work["explain"].add_store(len(plan.stage("explain")) * n * 2 * a.row_bytes)
    work["score"].add_store(len(plan.stage("score")) * n * s.judge_calls * ai["examples_per_prompt"] * a.row_bytes)
    llm_explain = sum(n for x in plan.stage("explain") if _asks_llm(x))  # latents explained by an LLM
    llm_scored = sum(n for x in plan.stage("score") if _asks_llm(x))  # latents x LLM scorers
    if ai["client"] == "anthropic":
        ex = cfg["execution"]
        batch = {st: bool(ex.get(st, {}).get("anthropic_batch", True)) for st in LLM_STAGES}
        per = llm_cost_per_latent(ai, batch, a)
        cost["explain"] = None if per is None else per["explain"] * llm_explain
        cost["score"] = None if per is None else per["score"] * llm_scored
        return
    # a local judge: prefill FLOPs of every prompt token (no prompt cache)
    known = _KNOWN_PARAMS.get(str(ai["local_model"]))
    if known is None:  # a local model directory of unknown size
        if llm_explain:
            work["explain"].unknown_compute()
        if llm_scored:
            work["score"].unknown_compute()
        return
    fl = 2 * known[0]
    work["explain"].add_flops("bfloat16", llm_explain * (s.explain_input + s.explain_output) * fl, a.local_judge_mfu)
    judge_tokens = s.judge_calls * (s.judge_prefix + s.judge_user + s.judge_output)
    work["score"].add_flops("bfloat16", llm_scored * judge_tokens * fl, a.local_judge_mfu)


# ---------------------------------------------------------------------------- printing


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "unknown (set models.<name>.d_model)"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if value < 1000 or unit == "PB":
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def human_gib(n: int) -> str:
    """Device memory in GiB (how accelerators are sold: an "80 GB" A100 has 80 GiB)."""
    return f"{n / 1024**3:.1f} GiB"


def _hours(h: float | None) -> str:
    if h is None:
        return "unknown"
    return f"{h:.1g}" if 0 < h < 0.01 else f"{h:.2f}" if h < 10 else f"{h:.1f}"


def format_estimates(est: Estimates) -> str:
    """The tables `randsae plan` prints: per stage and in total, the largest group's memory,
    then every assumption with its source."""
    w = max(len(s.stage) for s in est.stages)
    lines = ["estimates (docs/estimates.md)",
             f"  {'stage':<{w}} {'jobs':>7} {'store':>10} {'transient':>10} {'A100-h':>9} {'H100-h':>9}  LLM USD"]
    for s in est.stages:
        usd = "" if s.llm_cost_usd is None else f"{s.llm_cost_usd:,.2f}"
        lines.append(f"  {s.stage:<{w}} {s.jobs:>7} {human_bytes(s.store_bytes) if s.store_bytes is not None else 'unknown':>10} "
                     f"{human_bytes(s.transient_bytes) if s.transient_bytes is not None else 'unknown':>10} "
                     f"{_hours(s.gpu_hours['a100']):>9} {_hours(s.gpu_hours['h100']):>9}  {usd}")
    jobs = sum(s.jobs for s in est.stages)
    lines.append(f"  {'total':<{w}} {jobs:>7} {'':>10} {'':>10} {_hours(est.gpu_hours['a100']):>9} "
                 f"{_hours(est.gpu_hours['h100']):>9}")
    lines.append(f"estimated disk peak (everything kept + the largest transient): {human_bytes(est.disk_peak_bytes)}")
    lines.append(f"GPU-hours without the LLM judge: A100 {_hours(est.gpu_hours_without_judge['a100'])}, "
                 f"H100 {_hours(est.gpu_hours_without_judge['h100'])}")
    lines.append("LLM cost: " + ("none (the client is not anthropic)" if est.llm_cost_usd is None
                                 else f"${est.llm_cost_usd:,.2f} (Anthropic, list prices)"))
    g = est.largest_group
    if g is not None:
        parts = ", ".join(f"{k.replace('_', ' ')} {human_gib(v)}" for k, v in g.parts().items() if v)
        fits = ", ".join(f"{acc.name.upper()} {human_gib(acc.memory_bytes)}: {'fits' if g.device_peak <= acc.memory_bytes else 'DOES NOT FIT'}"
                         for acc in ACCELERATORS)
        spread = (f"; on {g.devices} devices (execution.sae.devices) the fullest holds {human_gib(g.device_peak)}"
                  if g.devices > 1 else "")
        lines.append(f"largest SAE job's device memory: {g.group}: {human_gib(g.total)} ({parts}){spread}; {fits}")
        if g.device_peak > A100.memory_bytes:
            if g.n_saes > 1:
                one = max(1, (g.sae_state + g.sae_workspace) // g.n_saes)
                lines.append(f"  on several devices (execution.sae.devices) the first holds the model, forward batch "
                             f"and windows ({human_gib(g.model_weights + g.forward_batch + g.window_buffer)}), the "
                             f"others one SAE ({human_gib(one)}) or more each")
            lines.append(f"  to fit: {settings_to_change(g)}")
    lines.append("accelerators:")
    for acc in ACCELERATORS:
        lines.append(f"  {acc.name}: bf16 {acc.bf16_flops / 1e12:g} TFLOP/s, fp32 {acc.fp32_flops / 1e12:g} TFLOP/s "
                     f"({acc.source})")
    lines.append("assumptions:")
    for name, value, doc, source in est.assumptions.rows():
        lines.append(f"  {name} = {value}: {doc} [{source}]")
    return "\n".join(lines)

