"""TopK sparse autoencoder with a hand-written sparse backward.

    pre     = ReLU(W_enc (x - b_dec) + b_enc)            [N, L]  (dense, no autograd graph)
    values, indices = top-k of pre per token              [N, k]
    x_hat   = sum_j values[:, j] W_dec[indices[:, j]] + b_dec

Why by hand: autograd through ``topk`` of a dense [N, L] matrix would build and backpropagate a
dense [N, L] gradient, as expensive as the forward matmul. Only the k selected pre-activations
per token receive gradient, so :class:`_SelectedPreacts` returns exactly those gradients: the
encoder gradient is a scatter of N*k rows (kernels.encoder_weight_grad) and the decoder-bias
gradient through the encoder a [L] x [L, d] product.

Layout: the encoder weight and bias live in one parameter ``enc`` = [W_enc | b_enc] of shape
[L, d + 1] (``W_enc`` and ``b_enc`` are views of it). With a column of ones appended to the
input, one matmul yields the biased pre-activations (no bias broadcast pass over [N, L]) and one
scatter yields both gradients. Saved files hold W_enc and b_enc separately (docs/sae.md).

Decoder rows have unit norm (an invariant kept by :meth:`TopKSAE.normalize_decoder_` after every
optimizer step; :meth:`TopKSAE.remove_parallel_decoder_grad_` removes the gradient component
that would change a row's norm). Save/load format: docs/sae.md.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from randsae.kernels import encoder_weight_grad, sparse_decode
from randsae.sae.config import SaeConfig
from randsae.sae.topk import topk_nonneg

FORMAT_NAME = "randsae.topk_sae"
FORMAT_VERSION = 1
WEIGHTS_FILE = "sae.safetensors"
CONFIG_FILE = "cfg.json"

#: CPU: compute the dense pre-activations in row blocks of at most this many elements, so the
#: workspace stays bounded (64 MiB in float32) whatever N and L are. Block heights are powers of
#: two: oneDNN's bf16 GEMM is markedly slower for heights like 910 than for 1024.
CPU_BLOCK_ELEMS = 1 << 24

COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class SaeOutput(NamedTuple):
    x_hat: torch.Tensor  # [N, d] float32
    values: torch.Tensor  # [N, k] float32, ReLU'd; order of the k entries unspecified
    indices: torch.Tensor  # [N, k] int64
    aux_values: torch.Tensor | None  # [N, k_aux] pre-activations of the top dead latents
    aux_indices: torch.Tensor | None


class _Selection(NamedTuple):
    raw: torch.Tensor
    indices: torch.Tensor
    aux_raw: torch.Tensor | None
    aux_indices: torch.Tensor | None
    xc_aug: torch.Tensor  # [x - b_dec | 1] in float32 (detached), [N, d + 1]


class _SelectedPreacts(torch.autograd.Function):
    """values = ReLU(pre[n, indices[n, j]]) as a differentiable function of enc and b_dec.

    The forward receives the already-selected raw pre-activations (computed without a graph);
    the backward returns gradients that involve only the selected (token, latent) pairs.
    """

    @staticmethod
    def forward(
        ctx: Any,
        raw: torch.Tensor,
        indices: torch.Tensor,
        xc_aug: torch.Tensor,
        enc: torch.Tensor,
        b_dec: torch.Tensor,
    ) -> torch.Tensor:
        values = raw.to(torch.float32).relu()
        ctx.save_for_backward(values, indices, xc_aug, enc)
        return values

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        values, indices, xc_aug, enc = ctx.saved_tensors
        gv = torch.where(values > 0, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
        # d pre[n, l] / d enc[l] = [x_n - b_dec | 1]; d pre[n, l] / d b_dec = -W_enc[l]
        grad_enc = encoder_weight_grad(gv, indices, xc_aug, enc.shape[0]).to(enc.dtype)
        grad_b_dec = None
        if ctx.needs_input_grad[4]:
            d = enc.shape[1] - 1
            grad_b_dec = -(grad_enc[:, d] @ enc[:, :d])
        return None, None, None, grad_enc if ctx.needs_input_grad[3] else None, grad_b_dec


class TopKSAE(nn.Module):
    """TopK SAE. Parameters are float32; ``compute_dtype`` is used for the dense encoder matmul."""

    def __init__(
        self,
        d_model: int,
        n_latents: int,
        k: int,
        compute_dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= k <= n_latents:
            raise ValueError(f"k must be in [1, n_latents={n_latents}], got {k}")
        self.d_model, self.n_latents, self.k = d_model, n_latents, k
        self.compute_dtype = compute_dtype
        self.config: SaeConfig | None = None
        kw: dict[str, Any] = {"dtype": torch.float32, "device": device}
        self.enc = nn.Parameter(torch.zeros(n_latents, d_model + 1, **kw))  # [W_enc | b_enc]
        self.W_dec = nn.Parameter(torch.zeros(n_latents, d_model, **kw))
        self.b_dec = nn.Parameter(torch.zeros(d_model, **kw))
        self._ws: dict[str, torch.Tensor] = {}

    @property
    def W_enc(self) -> torch.Tensor:
        """Encoder weight [L, d] (a view of ``enc``)."""
        return self.enc[:, : self.d_model]

    @property
    def b_enc(self) -> torch.Tensor:
        """Encoder bias [L] (a view of ``enc``)."""
        return self.enc[:, self.d_model]

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def initialised(
        cls,
        d_model: int,
        n_latents: int,
        k: int,
        seed: int,
        b_dec: torch.Tensor | None = None,
        compute_dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> TopKSAE:
        """Seeded init, identical on every device: W_enc ~ U(-1/sqrt(d), 1/sqrt(d)) (drawn on the
        CPU), b_enc = 0, W_dec = W_enc with rows normalised to unit norm, b_dec as given (or 0)."""
        sae = cls(d_model, n_latents, k, compute_dtype, device)
        gen = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(d_model)
        w = (torch.rand(n_latents, d_model, generator=gen, dtype=torch.float32) * 2 - 1) * bound
        with torch.no_grad():
            sae.W_enc.copy_(w)
            sae.W_dec.copy_(w)
            sae.normalize_decoder_()
            if b_dec is not None:
                sae.b_dec.copy_(b_dec.to(torch.float32))
        return sae

    # -- forward --------------------------------------------------------------------------------

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, d] -> (values [N, k] float32 >= 0, indices [N, k] int64); differentiable."""
        sel = self._select(x, None, 0)
        values = _SelectedPreacts.apply(sel.raw, sel.indices, sel.xc_aug, self.enc, self.b_dec)
        return values, sel.indices

    def decode(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """(values, indices) -> x_hat [N, d] including b_dec."""
        return sparse_decode(values, indices, self.W_dec) + self.b_dec

    def forward(
        self, x: torch.Tensor, dead_mask: torch.Tensor | None = None, k_aux: int = 0
    ) -> SaeOutput:
        """Encode and decode; with a dead mask and k_aux > 0 also select the top-k_aux dead
        latents per token (for the AuxK loss) from the same pre-activations."""
        dead_ids = None
        if dead_mask is not None and k_aux > 0:
            ids = dead_mask.nonzero().squeeze(1)
            dead_ids = ids if ids.numel() > 0 else None
        sel = self._select(x, dead_ids, k_aux)
        params = (self.enc, self.b_dec)
        values = _SelectedPreacts.apply(sel.raw, sel.indices, sel.xc_aug, *params)
        x_hat = self.decode(values, sel.indices)
        aux_values = None
        if sel.aux_raw is not None:
            aux_values = _SelectedPreacts.apply(sel.aux_raw, sel.aux_indices, sel.xc_aug, *params)
        return SaeOutput(x_hat, values, sel.indices, aux_values, sel.aux_indices)

    @torch.no_grad()
    def _select(self, x: torch.Tensor, dead_ids: torch.Tensor | None, k_aux: int) -> _Selection:
        """Dense pre-activations in row blocks into a reused workspace, top-k per block;
        nothing [N, L]-sized is allocated per call."""
        if x.ndim != 2 or x.shape[1] != self.d_model:
            raise ValueError(f"expected input [N, {self.d_model}], got {tuple(x.shape)}")
        n, d = x.shape
        xc_aug = torch.empty(n, d + 1, dtype=torch.float32, device=self.enc.device)
        torch.sub(x.to(device=self.enc.device), self.b_dec, out=xc_aug[:, :d])
        xc_aug[:, d] = 1
        x_op, w_op = self._encoder_operands(xc_aug)
        rows = self._block_rows(n)
        buf = self._buffer("pre", (rows, self.n_latents))
        parts: list[tuple[torch.Tensor, ...]] = []
        for s in range(0, n, rows):
            pre = buf[: min(rows, n - s)]
            torch.mm(x_op[s : s + rows], w_op.T, out=pre)
            parts.append(self._select_block(pre, dead_ids, k_aux))
        cols = list(zip(*parts))
        raw, idx = torch.cat(cols[0]), torch.cat(cols[1])
        aux_raw = aux_idx = None
        if dead_ids is not None:
            aux_raw, aux_idx = torch.cat(cols[2]), torch.cat(cols[3])
        return _Selection(raw, idx, aux_raw, aux_idx, xc_aug)

    def _select_block(
        self, pre: torch.Tensor, dead_ids: torch.Tensor | None, k_aux: int
    ) -> tuple[torch.Tensor, ...]:
        vals, idx = topk_nonneg(pre, self.k)
        if dead_ids is None:
            return vals, idx
        dead_pre = pre.index_select(1, dead_ids)
        a_vals, a_pos = topk_nonneg(dead_pre, min(k_aux, dead_ids.numel()))
        return vals, idx, a_vals, dead_ids[a_pos]

    def _encoder_operands(self, xc_aug: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_op, w_op) with pre = x_op @ w_op.T, in the compute dtype (a reused converted copy
        of ``enc`` when that is not float32)."""
        if self.compute_dtype == torch.float32:
            return xc_aug, self.enc.detach()
        x_op = xc_aug.to(self.compute_dtype)
        w_op = self._buffer("enc", tuple(self.enc.shape))
        w_op.copy_(self.enc.detach())
        return x_op, w_op

    def _block_rows(self, n: int) -> int:
        if self.enc.device.type != "cpu":
            return max(1, n)
        rows = max(1, CPU_BLOCK_ELEMS // self.n_latents)
        return min(n, 1 << (rows.bit_length() - 1))

    def _buffer(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """Reused workspace: fresh multi-MiB allocations cost page faults on every step."""
        buf = self._ws.get(name)
        dev = self.enc.device
        if (
            buf is None
            or buf.shape[1:] != shape[1:]
            or buf.shape[0] < shape[0]
            or buf.device != dev
            or buf.dtype != self.compute_dtype
        ):
            buf = torch.empty(shape, dtype=self.compute_dtype, device=dev)
            self._ws[name] = buf
        return buf[: shape[0]]

    # -- decoder constraints --------------------------------------------------------------------

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every decoder row to unit L2 norm."""
        norms = torch.linalg.vector_norm(self.W_dec, dim=1, keepdim=True)
        self.W_dec.div_(norms.clamp_min(torch.finfo(torch.float32).tiny))

    @torch.no_grad()
    def remove_parallel_decoder_grad_(self) -> None:
        """Drop the component of each decoder row's gradient along the (unit) row itself: to
        first order that component only changes the row's norm, which renormalisation undoes."""
        g = self.W_dec.grad
        if g is None:
            return
        dots = rowwise_dot(g, self.W_dec)
        g.addcmul_(dots.unsqueeze(1), self.W_dec, value=-1.0)

    # -- persistence ----------------------------------------------------------------------------

    def save(self, out_dir: str | Path) -> None:
        """Write sae.safetensors and cfg.json into out_dir (each via temp file + rename)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {
            name: getattr(self, name).detach().to("cpu", torch.float32).contiguous()
            for name in ("W_enc", "b_enc", "W_dec", "b_dec")
        }
        tmp = out / f".{WEIGHTS_FILE}.tmp"
        # One metadata entry only: safetensors writes its metadata map in hash order, which
        # varies between processes, so two entries would make identical weights differ in
        # their file bytes. The version lives in cfg.json, which load() checks.
        save_file(tensors, str(tmp), metadata={"format": FORMAT_NAME})
        os.replace(tmp, out / WEIGHTS_FILE)
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "d_model": self.d_model,
            "n_latents": self.n_latents,
            "k": self.k,
            "config": self.config.to_dict() if self.config is not None else None,
        }
        _write_text_atomic(out / CONFIG_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, sae_dir: str | Path, device: torch.device | str | None = None) -> TopKSAE:
        """Load a directory written by :meth:`save`; checks format version and shapes."""
        d = Path(sae_dir)
        meta = json.loads((d / CONFIG_FILE).read_text())
        if meta.get("format") != FORMAT_NAME or meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{d / CONFIG_FILE}: format {meta.get('format')!r} v{meta.get('format_version')}, "
                f"this code reads {FORMAT_NAME!r} v{FORMAT_VERSION}"
            )
        cfg = SaeConfig.from_dict(meta["config"]) if meta.get("config") is not None else None
        dtype = COMPUTE_DTYPES[cfg.dtype] if cfg is not None else torch.float32
        sae = cls(meta["d_model"], meta["n_latents"], meta["k"], dtype, device)
        sae.config = cfg
        tensors = load_file(str(d / WEIGHTS_FILE))
        expected = {
            "W_enc": (sae.n_latents, sae.d_model),
            "b_enc": (sae.n_latents,),
            "W_dec": (sae.n_latents, sae.d_model),
            "b_dec": (sae.d_model,),
        }
        with torch.no_grad():
            for name, shape in expected.items():
                if name not in tensors or tuple(tensors[name].shape) != shape:
                    got = tuple(tensors[name].shape) if name in tensors else "missing"
                    raise ValueError(f"{d / WEIGHTS_FILE}: {name} is {got}, expected {shape}")
                getattr(sae, name).copy_(tensors[name])
        return sae


#: Rows per block in :func:`rowwise_dot` (a [256, d] product buffer stays in L2 cache).
_ROWDOT_BLOCK = 256


def rowwise_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``out[i] = <a[i], b[i]>`` for ``[R, d]`` tensors; the same values as
    ``torch.linalg.vecdot``, which on a CPU materialises the whole [R, d] product (about
    twice as slow for a decoder-sized matrix); on an accelerator it is vecdot."""
    if a.device.type != "cpu":
        return torch.linalg.vecdot(a, b)
    out = torch.empty(a.shape[0], dtype=a.dtype, device=a.device)
    buf = torch.empty(min(_ROWDOT_BLOCK, a.shape[0]), a.shape[1], dtype=a.dtype, device=a.device)
    for s in range(0, a.shape[0], _ROWDOT_BLOCK):
        part = buf[: min(_ROWDOT_BLOCK, a.shape[0] - s)]
        torch.mul(a[s : s + _ROWDOT_BLOCK], b[s : s + _ROWDOT_BLOCK], out=part)
        torch.sum(part, dim=1, out=out[s : s + _ROWDOT_BLOCK])
    return out


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
