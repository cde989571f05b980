"""Matrix layers with multipliers: W = fixed_mult · s · r_i · W̃_ij · c_j (arXiv 2601.04890).

Each converted layer declares `parametrization`, its `LayerParametrization` (role, kind, width multiplier, the fixed
multiplier, learnable multipliers, LR/WD scales), set once by `convert`. `fixed_mult` is the recipe's μP forward
multiplier: the record's number, copied onto the layer as a plain float for the forward (it never trains and never
reaches an optimizer).
`mult_scale` (s, shape (1,)), `mult_row` (r, one per output) and `mult_col` (c, one per input) are the learnable
multipliers (LRM); any of them may be absent. For nn.Embedding, rows are tokens and columns are width.

Layers are converted in place by switching their class, so every reference a user's model holds to a layer (and
every hook on it) stays valid, and parameters keep their names (`blocks.0.attn.q.weight`); the multipliers appear
beside them (`blocks.0.attn.q.mult_row`) and live in `state_dict` like any parameter.

Two training paths give the same updates:
- *reparametrized*: the forward builds W from its factors (`merged_matrix`) as one autograd node (`_Reparametrize`)
  whose backward is `factor_grads`, in every forward (every micro-batch);
- *effective matrix* (`EffectivePath`): forward/backward use the merged W as one leaf tensor, and the gradient G of
  W is mapped onto the factors once per optimizer step: dW̃ = a·G⊙(r cᵀ), dr = a·(G⊙W̃)c, dc = a·(G⊙W̃)ᵀr,
  ds = fixed_mult·rᵀ(G⊙W̃)c with a = fixed_mult·s (`factor_grads` again). Muon then orthogonalizes dW̃, not G.

What the multipliers cost (issue 15; measured in benchmarks/RESULTS.md): full-size memory traffic, never FLOPs over
tokens. With eager torch ops, building W reads W̃ and writes W twice (rows then columns scaled: 4 full-size streams) and
the mapping writes H = G⊙W̃ once, reads it for its two matrix–vector products and scales G in place into dW̃ (9
streams). On CPU the fused kernels (`_fused`, built from `_fused.c` on first use) take one pass each: the mapping reads
G and W̃ and writes dW̃ with both sums taken on the way (3 streams), the rebuild reads W̃ and writes W (2, with
streaming stores); on the effective path one call takes all of a model's matrices (`_FusedPlan`), so no Python work per
layer remains but setting its gradients. The effective path pays these once per optimizer step; the reparametrized path
pays them in every micro-batch; mup pays 4 per micro-batch for its fixed multiplier (W·fixed_mult and the gradient's
product). torch.compile of the two functions on CPU measured slower than eager (81.9 vs 34.0 ms for the width-512
proxy's mapping): its column sum walks the matrix a column strip at a time. On CUDA the eager ops run (the fused kernels
are CPU code; no GPU has measured either).
"""
from __future__ import annotations

import copy
import inspect

import torch
import torch.nn.functional as F
from torch import nn

from . import _fused
from .parametrization import (
    GUARDED_METHODS,
    MODEL_ATTR,
    MULTIPLIERS,
    UNMERGED_MARKER,
    LayerParametrization,
    parametrization_of,
)

MULTIPLIER_PARAMS = tuple(f"mult_{m}" for m in MULTIPLIERS)


class _Multiplied:
    """Shared behaviour of the two converted layer types (mixed into nn.Linear / nn.Embedding subclasses).

    The attributes declared here are the ones a converted layer adds besides its multiplier parameters; `merge`
    removes exactly these (it reads them from this declaration)."""

    parametrization: LayerParametrization
    fixed_mult: float  # = parametrization.fixed_mult, as a plain float for the forward
    _effective: torch.Tensor | None
    # class constant: the weight is stored (fan_in, fan_out), transposed against nn.Linear (transformers' Conv1D)
    TRANSPOSED = False

    def _attach(self, record: LayerParametrization) -> None:
        w = self._matrix(self.weight)
        self.parametrization = record
        self.fixed_mult = float(record.fixed_mult)
        self._effective = None
        sizes = {"scale": 1, "row": w.shape[0], "col": w.shape[1]}
        for m in MULTIPLIERS:
            value = nn.Parameter(torch.ones(sizes[m], dtype=w.dtype, device=w.device)) if m in record.learned else None
            self.register_parameter(f"mult_{m}", value)

    def learned_multipliers(self) -> dict[str, nn.Parameter]:
        return {m: p for m in MULTIPLIERS if (p := getattr(self, f"mult_{m}")) is not None}

    def _matrix(self, w: torch.Tensor) -> torch.Tensor:
        """The stored tensor as an (fan_out, fan_in) view (rows are outputs: what r and c index), and back."""
        return w.T if self.TRANSPOSED else w

    def effective_weight(self) -> torch.Tensor:
        """The matrix the layer applies: fixed_mult · s · r ⊙ W̃ ⊙ c (with autograd through the factors), in the
        layout the weight is stored in."""
        return self._matrix(self._effective_matrix())

    def _effective_matrix(self) -> torch.Tensor:
        w = self._matrix(self.weight)
        r, c, s = self.mult_row, self.mult_col, self.mult_scale
        if r is None and c is None and s is None:  # fixed μP multiplier only (mup): one product, autograd's own
            return w * self.fixed_mult if self.fixed_mult != 1.0 else w
        return _Reparametrize.apply(w, r, c, s, self.fixed_mult)

    @torch.no_grad()
    def refresh_effective(self) -> None:
        """(Re)build the merged matrix: into the previous one's storage when there is one (no new full-size tensor
        per step; the last step's graph through it is gone by then)."""
        w = self._matrix(self.weight)
        out = self._matrix(self._effective) if self._effective is not None else None
        if out is not None and (out.shape, out.dtype, out.device) != (w.shape, w.dtype, w.device):
            out = None  # the weight was replaced (load_state_dict with another dtype, .to(device))
        merged = merged_matrix(w, self.mult_row, self.mult_col, self.mult_scale, self.fixed_mult, out=out)
        self._effective = self._matrix(merged).detach().requires_grad_(True)

    @torch.no_grad()
    def map_effective_grad(self) -> None:
        """Distribute the gradient of the merged matrix onto W̃ and the multipliers (formulas in the module doc;
        `factor_grads`). The merged matrix's gradient buffer, scaled in place, becomes W̃'s gradient."""
        g = self._effective.grad
        if g is None:
            return
        self._effective.grad = None
        dw, dr, dc, ds = factor_grads(self._matrix(g), self._matrix(self.weight), self.mult_row, self.mult_col,
                                      self.mult_scale, self.fixed_mult, inplace=True)
        self._take_grads(self._matrix(dw), dr, dc, ds)

    def _take_grads(self, dw: torch.Tensor, dr, dc, ds) -> None:
        """Add the mapped gradients (dW̃ in the weight's stored layout) to the parameters' (set where None)."""
        for name, grad in zip(("weight", "mult_row", "mult_col", "mult_scale"), (dw, dr, dc, ds)):
            if grad is not None:
                p = getattr(self, name)
                p.grad = grad if p.grad is None else p.grad.add_(grad)

    def _factors(self) -> tuple:
        """(W̃ as (fan_out, fan_in), r, c, s, fixed_mult): what the kernels take (`_fused.Batch`)."""
        return self._matrix(self.weight), self.mult_row, self.mult_col, self.mult_scale, self.fixed_mult


def merged_matrix(w: torch.Tensor, r: torch.Tensor | None, c: torch.Tensor | None, s: torch.Tensor | None,
                  fixed_mult: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """a · r ⊙ W̃ ⊙ c with a = fixed_mult · s, into `out` if given. W̃ is (fan_out, fan_in); r, c, s may be None.
    One pass on CPU where the fused kernel applies (`_fused`), else two eager passes (rows scaled by a·r, then
    columns by c; the products of small vectors are free), with the same products in the same order."""
    if (lib := _fused.usable(w, r, c, s, out)) is not None:
        done = _fused.merged(lib, w, r, c, s, fixed_mult, out if out is not None else torch.empty_like(w))
        if done is not None:
            return done
    a = fixed_mult if s is None else s * fixed_mult
    rows = a if r is None else r[:, None] * a
    out = torch.mul(w, rows, out=out) if out is not None else w * rows
    return out.mul_(c) if c is not None else out


def factor_grads(g: torch.Tensor, w: torch.Tensor, r: torch.Tensor | None, c: torch.Tensor | None,
                 s: torch.Tensor | None, fixed_mult: float, *, inplace: bool = False) -> tuple:
    """Gradients (dW̃, dr, dc, ds) of a loss through W = a · r ⊙ W̃ ⊙ c (a = fixed_mult · s), from its gradient G:

        dW̃ = a · G ⊙ (r cᵀ),  H = G ⊙ W̃,  dr = a · H c,  dc = a · Hᵀ r,  ds = fixed_mult · rᵀ H c

    (None for an absent factor; an absent r or c counts as ones). `inplace`: dW̃ is written over G (the caller owns
    G). On CPU where the fused kernel applies (`_fused`), one pass reads G and W̃ and writes dW̃ with H c and Hᵀ r
    summed on the way (3 full-size streams); else eager ops: H once, its two matrix–vector products, and dW̃ in two
    passes (9). Used by the reparametrized forward's backward (`_Reparametrize`) and by the effective path's
    `map_effective_grad` for a layer the batched call does not take; `EffectivePath.map_grads` runs the same kernel
    over all its other layers in one call, once per optimizer step, after all micro-batches."""
    if (lib := _fused.usable(g, w, r, c, s)) is not None:
        fused = _fused.map_grads(lib, g, w, r, c, s, fixed_mult, g if inplace else torch.empty_like(g))
        if fused is not None:
            return fused
    a = fixed_mult if s is None else s * fixed_mult
    rows = a if r is None else r[:, None] * a
    if r is not None or c is not None or s is not None:
        h = g * w
        hc = (h @ c if c is not None else h.sum(1)) if r is not None or s is not None else None
        hr = (h.T @ r if r is not None else h.sum(0)) if c is not None else None
    dw = g.mul_(rows) if inplace else g * rows
    dw = dw.mul_(c) if c is not None else dw
    dr = hc * a if r is not None else None
    dc = hr * a if c is not None else None
    ds = (r @ hc if r is not None else hc.sum()).reshape(1) * fixed_mult if s is not None else None
    return dw, dr, dc, ds


class _Reparametrize(torch.autograd.Function):
    """W = a · r ⊙ W̃ ⊙ c as one autograd node: the forward in two passes (`merged_matrix`), the backward by
    `factor_grads`. It saves only the factors; autograd through the three products saved two full-size intermediates
    and spent three products forward and six backward (two per product) against two and five here (module doc).
    tests/test_overhead.py checks it against autograd's products in float64; benchmarks/bench_overhead.py times it."""

    @staticmethod
    def forward(ctx, w, r, c, s, fixed_mult):
        ctx.save_for_backward(w, r, c, s)
        ctx.fixed_mult = fixed_mult
        return merged_matrix(w, r, c, s, fixed_mult)

    @staticmethod
    def backward(ctx, g):
        w, r, c, s = ctx.saved_tensors
        dw, dr, dc, ds = factor_grads(g, w, r, c, s, ctx.fixed_mult)
        need = ctx.needs_input_grad
        return (dw if need[0] else None, dr if need[1] else None, dc if need[2] else None,
                ds if need[3] else None, None)


class MultipliedLinear(_Multiplied, nn.Linear):
    """nn.Linear whose weight is W = fixed_mult · s · r ⊙ W̃ ⊙ c."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self._effective if self._effective is not None else self.effective_weight()
        return F.linear(x, w, self.bias)


class MultipliedEmbedding(_Multiplied, nn.Embedding):
    """nn.Embedding whose table is E = fixed_mult · s · r ⊙ Ẽ ⊙ c, applied after the lookup (the table is never
    materialized: vocabularies are large)."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if self._effective is not None:
            return self._lookup(idx, self._effective)
        out = self._lookup(idx, self.weight)
        if self.mult_row is not None:
            out = out * F.embedding(idx, self.mult_row[:, None])
        if self.mult_col is not None:
            out = out * self.mult_col
        if self.mult_scale is not None:
            return out * (self.mult_scale * self.fixed_mult)
        return out * self.fixed_mult if self.fixed_mult != 1.0 else out

    def _lookup(self, idx: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, table, self.padding_idx, None, 2.0, self.scale_grad_by_freq, False)


class _MultipliedTransposedLinear(_Multiplied):
    """Mixed with transformers' Conv1D (GPT-2: y = x·W + b, W stored (fan_in, fan_out)) by `convert`: the same
    multipliers, indexed as for nn.Linear (r per output, c per input)."""

    TRANSPOSED = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self._effective if self._effective is not None else self.effective_weight()
        out = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), w) if self.bias is not None else x @ w
        return out.reshape(*x.shape[:-1], w.shape[1])


_CONVERTED = {nn.Linear: MultipliedLinear, nn.Embedding: MultipliedEmbedding}
_PLAIN = {v: k for k, v in _CONVERTED.items()}
_LAYER_ATTRS = tuple(inspect.get_annotations(_Multiplied))  # what a converted layer adds: merge removes these
# what parametrize adds to the model (instance attributes; and the marker buffer of `foreign.guard`)
_MODEL_ATTRS = (MODEL_ATTR, *GUARDED_METHODS)
# the converted class of each module layout `roles.layout_of` names (a foreign class gets a subclass made on first
# use: Multiplied<Class>, its forward from the layout's mixin)
_MIXINS = {"transposed-linear": _MultipliedTransposedLinear, "scaled-embedding": MultipliedEmbedding}


def convert(module: nn.Module, record: LayerParametrization, layout: str = "") -> None:
    """Turn an nn.Linear / nn.Embedding (or a module of a foreign `layout`, e.g. transformers' Conv1D) into its
    multiplied version, in place, as `record` says."""
    cls = type(module)
    if cls not in _CONVERTED:
        _CONVERTED[cls] = type(f"Multiplied{cls.__name__}", (_MIXINS[layout], cls), {})
        _PLAIN[_CONVERTED[cls]] = cls
    module.__class__ = _CONVERTED[cls]
    module._attach(record)


def multiplied_modules(model: nn.Module) -> list[tuple[str, _Multiplied]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _Multiplied)]


def multiplier_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every learnable multiplier."""
    return [
        (f"{n}.mult_{k}" if n else f"mult_{k}", p)
        for n, m in multiplied_modules(model)
        for k, p in m.learned_multipliers().items()
    ]


@torch.no_grad()
def merge(model: nn.Module) -> nn.Module:
    """A copy of `model` made of its plain layer classes (nn.Linear, nn.Embedding, Conv1D) with the multipliers
    folded into the weights.

    Same outputs, no multiplier parameters, no extra cost at inference. Tied weights whose layers carry different
    multipliers are untied (each layer gets its own merged matrix).
    """
    out = copy.deepcopy(model)
    layers = multiplied_modules(out)
    # before any weight is replaced; a module whose own forward multiplies by a constant gets it divided out
    merged = [m.effective_weight().detach() / m.parametrization.module_scale
              if m.parametrization.module_scale != 1.0 else m.effective_weight().detach().clone() for _, m in layers]
    for (_, m), w in zip(layers, merged):
        for name in MULTIPLIER_PARAMS:
            delattr(m, name)
        for attr in _LAYER_ATTRS:
            m.__dict__.pop(attr, None)
        m.__class__ = _PLAIN[type(m)]
        m.weight = nn.Parameter(w, requires_grad=m.weight.requires_grad)
    for sub in out.modules():
        for attr in _MODEL_ATTRS:
            sub.__dict__.pop(attr, None)
        sub._buffers.pop(UNMERGED_MARKER, None)
    return out


class EffectivePath:
    """Train through merged matrices: the forward/backward see one plain W per layer, and `map_grads()` turns its
    gradient into gradients of W̃ and the multipliers once per optimizer step (after gradient accumulation).

        path = EffectivePath(model)
        loss.backward(); path.map_grads(); clip_grad_norm_(model, 1.0); opt.step(); path.refresh()

    `close()` returns the model to the reparametrized forward.

    Under gradient accumulation the engine (`training.engine.Run.train_step`) runs every micro-batch's forward and
    backward on the same merged matrices (their gradients accumulate in place) and calls `map_grads()` once after the
    last: the mapping's cost does not grow with the number of micro-batches (tests/test_overhead.py: equal to the
    reparametrized path with accumulation in float64).

    Not for DistributedDataParallel: the merged matrices are not parameters, so DDP neither averages their gradients
    nor sees the multipliers used (tests/test_distributed.py pins both failures). Under DDP train the reparametrized
    path; with the effective path, average every gradient over the ranks after `map_grads()` (exact: the mapping is
    linear in G and the factors are equal on every rank): `lrm_mup.distributed.average_gradients`, as `train` does.
    """

    def __init__(self, model: nn.Module):
        parametrization_of(model)  # the one "not parametrized" error
        self.layers = [m for _, m in multiplied_modules(model)]
        self._plan: _FusedPlan | None = None
        self.refresh()

    @torch.no_grad()
    def refresh(self) -> None:
        """Rebuild the merged matrices from the current parameters (after every optimizer step): in one call of the
        fused kernels for the layers they take, planned at the first refresh and again whenever a parameter has
        moved to another storage (`_FusedPlan`); else layer by layer."""
        versions = self._versions()
        plan = self._plan if _fused.library() is not None else None
        if plan is None or plan.storages != [ptr for ptr, _ in versions]:
            for m in self.layers:
                m.refresh_effective()
            self._plan = _FusedPlan.of(self.layers, [ptr for ptr, _ in versions])
        else:
            for batch, layers, _ in plan.batches:
                batch.rebuild()
                for m in layers:  # the merged matrix stays the same leaf: a gradient not mapped is dropped
                    m._effective.grad = None
            for m in plan.rest:
                m.refresh_effective()
        self._seen = versions  # the rebuild changes no parameter

    def sync(self) -> None:
        """Rebuild the merged matrices if any factor changed since the last `refresh` other than by it: the merged
        matrices are a cache of W̃ and the multipliers, and an in-place edit (`weight.zero_()`, `load_state_dict`,
        `copy_`) or a replaced tensor would otherwise go unseen by the forward. Detected by each parameter's storage
        and in-place version counter (no pass over the matrices). `Run` calls it before every step and evaluation."""
        if self._versions() != self._seen:
            self.refresh()

    def _versions(self) -> list[tuple[int, int]]:
        return [(p.data_ptr(), p._version) for m in self.layers for p in m._parameters.values() if p is not None]

    @torch.no_grad()
    def map_grads(self) -> None:
        """Map every merged matrix's gradient onto its factors (`factor_grads`; the parameters' gradients are set,
        or added to): in one call of the fused kernels for the layers the last `refresh` planned, else layer by
        layer."""
        plan = self._plan if _fused.library() is not None else None
        for batch, layers, strides in plan.batches if plan is not None else ():
            grads = [m._effective.grad for m in layers]  # None: a layer this step's forward did not use
            if any(g is not None and g.stride() != stride for g, stride in zip(grads, strides)):
                for m in layers:  # a gradient laid out unlike its matrix: this batch one layer at a time
                    m.map_effective_grad()
                continue
            for m in layers:
                m._effective.grad = None
            for m, g, mapped in zip(layers, grads, batch.map(grads, grads)):
                if g is not None:
                    m._take_grads(g, *mapped)
        for m in plan.rest if plan is not None else self.layers:
            m.map_effective_grad()

    def close(self) -> None:
        self._plan = None
        for m in self.layers:
            m._effective = None


class _FusedPlan:
    """Which of an EffectivePath's layers the fused kernels take, as one `_fused.Batch` per dtype (mapped and rebuilt
    in one call each: no Python work per layer but setting its gradients), and the rest (one by one: the eager ops,
    or a kernel call per matrix). Valid while every parameter of the layers is in the storage it was planned with
    (`storages`); `EffectivePath.refresh` checks, and plans anew when one has moved (`.to()`, `.data =`, a
    replaced parameter). The batches hold the tensors they point to, so their memory outlives any such move and
    no other tensor can take a planned address while the plan lives (equal addresses are the same tensors)."""

    def __init__(self, storages: list[int], batches: list[tuple[_fused.Batch, list, list]], rest: list):
        self.storages, self.batches, self.rest = storages, batches, rest

    @classmethod
    def of(cls, layers: list, storages: list[int]) -> _FusedPlan | None:
        """The plan for layers whose merged matrices exist (after `refresh_effective`); None without the kernels."""
        if (lib := _fused.library()) is None:
            return None
        groups: dict[torch.dtype, list] = {}
        rest = []
        for m in layers:
            w, r, c, s, _ = factors = m._factors()
            out = m._matrix(m._effective)
            if _fused.usable(w, r, c, s, out) is not None and _fused.fits(w, out):
                groups.setdefault(w.dtype, []).append((m, factors, out))
            else:
                rest.append(m)
        batches = [(_fused.Batch(lib, [f for _, f, _ in group], [o for _, _, o in group]),
                    [m for m, _, _ in group], [m.weight.stride() for m, _, _ in group]) for group in groups.values()]
        return cls(storages, batches, rest)
