"""Group Influence: the influence of a domain's data on the loss of each target set (TiKMiX, methods.md).

Sign convention: influence is reported as *benefit*.

    S[v, d] = g_vᵀ H⁻¹ ḡ_d

* g_v = ∇θ of the mean token loss on target set v (all its labelled tokens pooled);
* ḡ_d = ∇θ of the mean token loss on a sample of domain d (gradient accumulation over the sample: no
  per-example gradients);
* H⁻¹ = the chosen preconditioner (``identity`` | ``adam`` | ``kfac``, below).

S[v, d] > 0 means upweighting domain d lowers target v's loss to first order: the step
θ ← θ − ε H⁻¹ ḡ_d changes L_v by −ε S[v, d] + O(ε²). This is −1 × the paper's Eq. 8 (which reports the
change of f, so negative = helpful).

Eq. 8 sums the member gradients of the group; we use the per-token *mean*. That rescales every domain by
its token count; the domain samples all have the same number of tokens (``n_tokens`` per domain), so the
matrix is the paper's up to one common positive factor, to which TiKMiX's objective is invariant (Eq. 9
divides by max_d S_vd). Group influence is linear in the group, so a mixture w has influence P = S·w.

Preconditioners (H⁻¹ is applied once, to the n target gradients, which are the ones held in memory):

* ``identity``: pure gradient alignment (DoGE/DGA's ⟨∇L_d, ∇L_target⟩; :func:`gradient_alignment`).
* ``adam``: the optimiser's own diagonal preconditioner 1/(sqrt(v̂)+eps), v̂ = exp_avg_sq/(1 − β₂^step)
  read from ``torch.optim.AdamW`` state; identity for parameters the optimiser holds no state for yet.
* ``kfac``: Kronecker-factored curvature per ``nn.Linear`` (bias folded into the weight by appending a
  constant-1 input): A = E[a aᵀ] over the layer's inputs, G = E[δ δᵀ] over the gradients of the summed
  token loss w.r.t. the layer's outputs, both averaged over token positions (so G⊗A approximates the
  Fisher of the mean token loss, i.e. the Gauss-Newton Hessian of what we differentiate). By default δ
  comes from labels *sampled* from the model's own predictive distribution (the true Fisher, as in
  Grosse et al. 2023's EK-FAC influence); ``kfac_fisher="empirical"`` uses the data's labels instead.
  Damping (our choice; the paper is silent): each factor gets λ·(mean eigenvalue of that factor) added to
  its diagonal, λ = ``damping`` (default 1e-3), i.e. the preconditioned gradient is
  (G + λ ḡ I)⁻¹ ∇W (A + λ ā I)⁻¹ = ((G + λ ḡ I) ⊗ (A + λ ā I))⁻¹ vec(∇W)  (row-major vec), computed from
  eigendecompositions. Layers with a factor larger than ``kfac_max_dim`` (e.g. an LM head over a big
  vocabulary), Linear weights shared with another module (tied embeddings), and every non-Linear
  parameter (norms, embeddings) are "the rest". Without a curvature of its own the rest keeps the identity
  while the K-FAC blocks are amplified by the inverse of their small eigenvalues, and embeddings, norms and
  the LM head drop out of S (``kfac_rest="identity"``, the first behaviour; kept to measure). Otherwise
  (our choice) the rest gets a damped curvature from the same pass, on the factored blocks' scale
  (``tests/benchmarks/bench_kfac_rest.py`` measures the choices against the exact damped Fisher):

  - ``kfac_rest="diag"`` (default): a Linear layer in the rest only because a factor is larger than
    ``kfac_max_dim`` keeps K-FAC's estimator and loses only the factor it cannot afford, which is replaced
    by its diagonal and damped like a factor (λ·its mean). An LM head over a big vocabulary gets
    diag(G + λ ḡ)⁻¹ ∇W (A + λ ā I)⁻¹, diag(G) = E[δ²] over the vocabulary and A the full factor over the
    hidden size (both sides diagonal if both are too large). Being the factored blocks' own estimator
    (per-position factors, the same damping), it carries their systematic error and no other: on the
    benchmark's causal LMs moving the LM head past ``kfac_max_dim`` changes S by under 1% (the diagonal
    Fisher of ``diag_v1``: 5-17%; the identity: 21-67%), moving the MLPs past it too by 1-11% (12-33%;
    69-84%), so the memory bound barely changes the answer. Every other parameter of the rest (embeddings,
    norms, tied weights) gets the damped diagonal Fisher of ``diag_v1``; a per-position full Fisher block for
    the norms (exact per block, but then on another scale than K-FAC's per-position factors) brought their
    share of |S| to the exact influence's and lowered the correlation with the exact S by ~0.03.
  - ``kfac_rest="diag_v1"`` (the behaviour before; kept to measure): every parameter of the rest, oversized
    Linear layers included, gets the damped *diagonal* Fisher
    F_ii = Σ_b (∂ℓ_b/∂θ_i)² / Σ_b N_b over the K-FAC sample's batches b, ℓ_b the summed loss of a batch
    of N_b labelled tokens. With sampled labels the per-token gradients have zero mean given the inputs,
    so cross terms between sequences vanish in expectation and this is an unbiased Fisher diagonal; with
    ``kfac_fisher="empirical"`` it is the usual batch approximation. Damped like the factors:
    (F + λ·mean(F))⁻¹.

Optional random projection (``projection_dim=k``): gradients are mapped to k dimensions by a JL
projection R/√k with i.i.d. Gaussian (default: ~3× faster to generate on a CPU than the alternative) or
Rademacher entries, generated chunk by chunk from a seeded
``torch.Generator`` (never materialised whole), so E⟨Rx, Ry⟩/k = ⟨x, y⟩. It is applied after the
preconditioner on the target side and to the raw domain gradient.

A target may be *combined* (:class:`CombinedTarget`): its gradient is the mean of its parts' mean-token
gradients, i.e. the gradient of the average of the parts' losses (Aioli's objective over per-domain
validation sets). TiKMiX combines the automatic per-domain held-out targets this way, because with one
target per domain S is near-diagonal and the Pareto constraint leaves no room to move.

Finite-step group influence (:meth:`GroupInfluence.score_lookahead`, TiKMiX-M): instead of the first-order
g_vᵀ u with u = H⁻¹ ḡ_w, the measured change of the target loss when the parameters take the step η·u,
divided by η:  P_v(w, η) = [L_v(θ) − L_v(θ − η u)] / η = g_vᵀ u − (η/2) uᵀ ∇²L_v u + O(η²).
As η → 0 it is the first-order influence, linear in the group (S·w); at the step size training takes it
adds the second-order term, which couples the domains of a group (uᵀ∇²L_v u has cross terms u_dᵀ∇²L_v u_e):
group influence is not additive beyond first order, and that is what TiKMiX-M's regression can learn and
TiKMiX-D's linear S cannot. The parameters are restored bit-exactly afterwards (copies, not subtraction).

Memory: at most the n target gradients and ONE domain gradient are alive at any time: the targets are
held (flat, or projected), each domain's gradient is accumulated in the parameters' ``.grad`` and reduced
to n dot products before the next domain starts. A combined target holds one extra gradient while it is
formed; a lookahead holds one copy of the parameters while they are displaced.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from tikmix.errors import ConfigError, DataError
from tikmix.losses import Batch, batch_loss_sum

BatchSource = Iterable[Batch] | Callable[[], Iterable[Batch]]
LossFn = Callable[[nn.Module, Batch], tuple[torch.Tensor, int, int]]

HESSIANS = ("identity", "adam", "kfac")
PARAM_SETS = ("all", "no_embeddings")
PROJECTIONS = ("rademacher", "gaussian")
FISHERS = ("sampled", "empirical")
KFAC_REST = ("diag", "diag_v1", "identity")

_PROJ_CHUNK_ELEMS = 1 << 22  # at most this many random entries (16 MiB in fp32) generated at once


# --------------------------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------------------------
def select_parameters(model: nn.Module, which: str = "all") -> list[tuple[str, nn.Parameter]]:
    """The trainable parameters influence is measured over: ``all`` or ``no_embeddings`` (drops every
    ``nn.Embedding`` parameter, and with it a tied LM head, which is the same tensor)."""
    if which not in PARAM_SETS:
        raise ConfigError("mixer.params", f"expected one of {PARAM_SETS}, got {which!r}")
    emb = {id(p) for mod in model.modules() if isinstance(mod, nn.Embedding) for p in mod.parameters(recurse=False)}
    out = [
        (n, p)
        for n, p in model.named_parameters()
        if p.requires_grad and not (which == "no_embeddings" and id(p) in emb)
    ]
    if not out:
        raise ConfigError("mixer.params", f"no trainable parameters left with params={which!r}")
    return out


def _as_iterable(src: BatchSource) -> Iterable[Batch]:
    return src() if callable(src) else src


# --------------------------------------------------------------------------------------------------------
# preconditioners
# --------------------------------------------------------------------------------------------------------
def _adam_groups(optimizer: torch.optim.Optimizer) -> dict[int, dict]:
    return {id(p): g for g in optimizer.param_groups for p in g["params"]}


def _adam_diag(optimizer: torch.optim.Optimizer, p: nn.Parameter, group: dict | None) -> torch.Tensor | None:
    st = optimizer.state.get(p, {})
    if group is None or "exp_avg_sq" not in st:
        return None
    step = st.get("step", 0)
    step = float(step.item() if torch.is_tensor(step) else step)
    if step <= 0:
        return None
    v_hat = st["exp_avg_sq"].to(_acc_dtype(p)) / (1.0 - group["betas"][1] ** step)
    return 1.0 / (v_hat.sqrt() + group["eps"])


def adam_preconditioner(optimizer: torch.optim.Optimizer, params: Sequence[nn.Parameter]) -> list[torch.Tensor | None]:
    """Per parameter, the diagonal 1/(sqrt(v̂)+eps) of an Adam(W) optimiser (None = identity: no state yet).
    (GroupInfluence computes these one parameter at a time instead, so no full-size copy is held.)"""
    groups = _adam_groups(optimizer)
    return [_adam_diag(optimizer, p, groups.get(id(p))) for p in params]


def _acc_dtype(p: torch.Tensor) -> torch.dtype:
    """Accumulation dtype for curvature/gradient statistics: at least fp32 (fp64 models stay fp64)."""
    return torch.float64 if p.dtype == torch.float64 else torch.float32


def _damped_inverse(M: torch.Tensor, damping: float) -> torch.Tensor:
    """(M + λ·mean_eig(M)·I)⁻¹ for a symmetric PSD M (λ absolute when M is 0)."""
    M = 0.5 * (M + M.T)
    evals, evecs = torch.linalg.eigh(M.double())
    evals = evals.clamp_min(0.0)
    mean = float(evals.mean())
    lam = damping * mean if mean > 0 else damping
    inv = (evecs / (evals + lam)) @ evecs.T
    return inv.to(M.dtype)


def _damped_diag_inverse(d: torch.Tensor, damping: float) -> torch.Tensor:
    """(diag(d) + λ·mean(d)·I)⁻¹ as a vector, for a non-negative d (λ absolute when d is 0): the diagonal
    counterpart of :func:`_damped_inverse`."""
    mean = float(d.mean())
    return 1.0 / (d + (damping * mean if mean > 0 else damping))


def kfac_precondition_matrix(grad: torch.Tensor, A_inv: torch.Tensor, G_inv: torch.Tensor) -> torch.Tensor:
    """G⁻¹ ∇W A⁻¹ for ∇W of shape [out, in] (bias already folded in as the last input column)."""
    return G_inv @ grad @ A_inv


class KFAC:
    """Kronecker factors A = E[a aᵀ], G = E[δ δᵀ] per ``nn.Linear``, collected with hooks; for a Linear layer
    with a factor over ``max_dim`` the same with that factor diagonal (``rest="diag"``), and a damped diagonal
    Fisher for every other selected parameter (``rest="diag"`` or ``"diag_v1"``; module doc)."""

    def __init__(
        self,
        model: nn.Module,
        params: Sequence[nn.Parameter],
        damping: float = 1e-3,
        max_dim: int = 4096,
        rest: str = "diag",
        names: Sequence[str] | None = None,
        keep_factors: bool = False,
    ):
        if not (damping > 0):
            raise ConfigError("mixer.damping", f"must be > 0, got {damping}")
        if rest not in KFAC_REST:
            raise ConfigError("mixer.kfac_rest", f"expected one of {KFAC_REST}, got {rest!r}")
        self.damping = float(damping)
        self.max_dim = int(max_dim)
        self.rest = rest
        owners: dict[int, int] = {}
        for mod in model.modules():
            for p in mod.parameters(recurse=False):
                owners[id(p)] = owners.get(id(p), 0) + 1
        selected = {id(p) for p in params}
        self.layers: dict[str, nn.Linear] = {}
        # rest="diag": oversized Linear layers -> (module, input factor full?, output factor full?); a factor
        # that is not full is kept as its diagonal
        self.partial: dict[str, tuple[nn.Linear, bool, bool]] = {}
        self.skipped: dict[str, str] = {}
        for name, mod in model.named_modules():
            if not isinstance(mod, nn.Linear) or id(mod.weight) not in selected:
                continue
            din = mod.in_features + (1 if mod.bias is not None else 0)
            if owners.get(id(mod.weight), 0) > 1:
                self.skipped[name] = "weight shared with another module (tied)"
            elif mod.bias is not None and id(mod.bias) not in selected:
                self.skipped[name] = "bias not in the selected parameters"
            elif max(din, mod.out_features) > self.max_dim:
                self.skipped[name] = f"factor dimension {max(din, mod.out_features)} > kfac_max_dim {self.max_dim}"
                if rest == "diag":
                    a_full, g_full = din <= self.max_dim, mod.out_features <= self.max_dim
                    self.partial[name] = (mod, a_full, g_full)
                    sides = [s for s, full in (("input", a_full), ("output", g_full)) if not full]
                    self.skipped[name] += f": Kronecker with a diagonal {' and '.join(sides)} factor"
            else:
                self.layers[name] = mod
        self._params = list(params)
        self._names = list(names) if names is not None else [f"param{i}" for i in range(len(self._params))]
        self._A: dict[str, torch.Tensor] = {}
        self._G: dict[str, torch.Tensor] = {}
        self._nA: dict[str, int] = {}
        self._nG: dict[str, int] = {}
        self.A_inv: dict[str, torch.Tensor] = {}
        self.G_inv: dict[str, torch.Tensor] = {}
        self.keep_factors = keep_factors  # keep the undamped A, G, F too (diagnostics and tests; memory x2)
        self.factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.diag: dict[int, torch.Tensor] = {}
        self.diag_inv: dict[int, torch.Tensor] = {}  # id(param) -> (F + λ·mean F)⁻¹ for the rest
        self.diag_names: dict[int, str] = {}
        self.tokens = 0
        self.flops = 0.0

    def _covered(self) -> set[int]:
        out = set()
        for mod in [*self.layers.values(), *(m for m, _, _ in self.partial.values())]:
            out.add(id(mod.weight))
            if mod.bias is not None:
                out.add(id(mod.bias))
        return out

    # hooks -----------------------------------------------------------------------------------------------
    def _fwd_hook(self, name: str, mod: nn.Linear, a_full: bool = True, g_full: bool = True):
        """Accumulates Σ a aᵀ and Σ δ δᵀ over positions (or only their diagonals, for a factor not ``full``)."""
        dt = _acc_dtype(mod.weight)

        def second_moment(x: torch.Tensor, full: bool) -> torch.Tensor:
            self.flops += 2.0 * x.shape[0] * x.shape[1] ** (2 if full else 1)
            return x.T @ x if full else (x * x).sum(0)

        def hook(_m, inputs, output):
            a = inputs[0].detach().reshape(-1, mod.in_features).to(dt)
            if mod.bias is not None:
                a = torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1)
            self._A[name] = self._A.get(name, 0) + second_moment(a, a_full)
            self._nA[name] = self._nA.get(name, 0) + a.shape[0]
            if output.requires_grad:

                def ghook(g):
                    d = g.detach().reshape(-1, mod.out_features).to(dt)
                    self._G[name] = self._G.get(name, 0) + second_moment(d, g_full)
                    self._nG[name] = self._nG.get(name, 0) + d.shape[0]

                output.register_hook(ghook)

        return hook

    def collect(self, model: nn.Module, batches: Iterable[Batch], loss_fn: LossFn) -> None:
        """Run forward/backward over ``batches`` (gradients of each batch's summed loss), form the damped
        inverses of the factors and, for the rest, of the diagonal Fisher. Parameter ``.grad`` is cleared."""
        handles = [mod.register_forward_hook(self._fwd_hook(n, mod)) for n, mod in self.layers.items()]
        handles += [
            mod.register_forward_hook(self._fwd_hook(n, mod, af, gf)) for n, (mod, af, gf) in self.partial.items()
        ]
        covered = self._covered()
        rest = (
            [(n, p) for n, p in zip(self._names, self._params) if id(p) not in covered]
            if self.rest != "identity"
            else []
        )
        sq: dict[int, torch.Tensor] = {}
        n_lab = 0
        try:
            for batch in batches:
                loss, nl, n_in = loss_fn(model, batch)
                self.tokens += n_in
                loss.backward()
                n_lab += nl
                for _, p in rest:  # per-batch gradient squared: the batch's gradient must not accumulate
                    if p.grad is not None:
                        g = p.grad.to(_acc_dtype(p))
                        sq[id(p)] = sq.get(id(p), 0) + g * g
                        self.flops += 2.0 * p.numel()
                for p in model.parameters():
                    p.grad = None
        finally:
            for h in handles:
                h.remove()
        for p in model.parameters():
            p.grad = None
        for name in [*self.layers, *self.partial]:
            if name not in self._A or name not in self._G:
                self.skipped[name] = "not reached by the KFAC sample"
                continue
            A = self._A.pop(name) / self._nA[name]
            G = self._G.pop(name) / self._nG[name]
            self.A_inv[name] = (
                _damped_inverse(A, self.damping) if A.dim() == 2 else _damped_diag_inverse(A, self.damping)
            )
            self.G_inv[name] = (
                _damped_inverse(G, self.damping) if G.dim() == 2 else _damped_diag_inverse(G, self.damping)
            )
            if self.keep_factors:
                self.factors[name] = (A, G)
            self.flops += 10.0 * sum(M.shape[0] ** 3 for M in (A, G) if M.dim() == 2)  # eigendecompositions, roughly
        for layers in (self.layers, self.partial):
            for name in list(layers):
                if name not in self.A_inv:
                    del layers[name]
        covered = self._covered()
        for n, p in rest:
            if id(p) in covered or id(p) not in sq or n_lab == 0:
                continue
            F = sq[id(p)] / n_lab
            self.diag_inv[id(p)] = _damped_diag_inverse(F, self.damping)
            self.diag_names[id(p)] = n
            if self.keep_factors:
                self.diag[id(p)] = F

    def precondition_(self) -> None:
        """Replace each covered layer's ``.grad`` by G⁻¹ ∇W A⁻¹ in place (bias folded in; a diagonal factor of
        a partly factored layer scales rows or columns), and the rest's by the damped inverse diagonal Fisher."""
        for name, mod in [*self.layers.items(), *((n, m) for n, (m, _, _) in self.partial.items())]:
            gw = mod.weight.grad
            if gw is None:
                continue
            A_inv, G_inv = self.A_inv[name], self.G_inv[name]
            dt = A_inv.dtype
            X = gw.to(dt)
            if mod.bias is not None:
                gb = mod.bias.grad if mod.bias.grad is not None else torch.zeros_like(mod.bias)
                X = torch.cat([X, gb.to(dt)[:, None]], dim=1)
            if A_inv.dim() == 2 and G_inv.dim() == 2:
                Y = kfac_precondition_matrix(X, A_inv, G_inv)
            else:
                Y = G_inv @ X if G_inv.dim() == 2 else X * G_inv[:, None]
                Y = Y @ A_inv if A_inv.dim() == 2 else Y * A_inv[None, :]
            self.flops += (
                2.0 * Y.numel() * ((Y.shape[0] if G_inv.dim() == 2 else 1) + (Y.shape[1] if A_inv.dim() == 2 else 1))
            )
            if mod.bias is not None:
                mod.weight.grad = Y[:, :-1].to(gw.dtype).contiguous()
                mod.bias.grad = Y[:, -1].to(gw.dtype).contiguous()
            else:
                mod.weight.grad = Y.to(gw.dtype)
        for p in self._params:
            d = self.diag_inv.get(id(p))
            if d is not None and p.grad is not None:
                p.grad.mul_(d.to(p.grad.dtype))
                self.flops += p.numel()


# --------------------------------------------------------------------------------------------------------
# random projection
# --------------------------------------------------------------------------------------------------------
class Projector:
    """x ↦ R x / √k with R [k, N] i.i.d. ±1 (or N(0,1)), generated per parameter chunk from a seeded
    generator: the same (seed, chunk) always gives the same block, so targets and domains share R."""

    def __init__(self, dim: int, seed: int, kind: str = "gaussian", device: torch.device | str = "cpu"):
        if kind not in PROJECTIONS:
            raise ConfigError("mixer.projection_kind", f"expected one of {PROJECTIONS}, got {kind!r}")
        if int(dim) < 1:
            raise ConfigError("mixer.projection_dim", f"must be null or a positive integer, got {dim}")
        self.k = int(dim)
        self.seed = int(seed)
        self.kind = kind
        self.device = torch.device(device)
        self.cols = max(1, _PROJ_CHUNK_ELEMS // self.k)
        self.flops = 0.0

    def _block(self, idx: int, ncols: int) -> torch.Tensor:
        g = torch.Generator(device=self.device)
        g.manual_seed((self.seed * 0x9E3779B97F4A7C15 + idx * 0x632BE59BD9B4E019 + 1) % (2**63 - 1))
        if self.kind == "rademacher":
            R = torch.randint(0, 2, (self.k, ncols), generator=g, device=self.device, dtype=torch.int8)
            return R.float().mul_(2).sub_(1)
        return torch.randn(self.k, ncols, generator=g, device=self.device)

    def project(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Project the concatenation of ``tensors`` (flattened, in order) to k dims."""
        out = torch.zeros(self.k, device=self.device, dtype=torch.float32)
        idx = 0
        for t in tensors:
            flat = t.reshape(-1).float()
            for s in range(0, flat.numel(), self.cols):
                chunk = flat[s : s + self.cols]
                out += self._block(idx, chunk.numel()) @ chunk
                idx += 1
            self.flops += 2.0 * self.k * flat.numel()
        return out / math.sqrt(self.k)


# --------------------------------------------------------------------------------------------------------
# group influence
# --------------------------------------------------------------------------------------------------------
@dataclass
class CombinedTarget:
    """A target whose gradient is the mean of its parts' mean-token gradients (the average of their losses)."""

    parts: dict[str, Any]


def block_kind(name: str) -> str:
    """Coarse block of a (Llama) parameter name, for reporting where influence comes from."""
    if "embed" in name:
        return "embedding"
    if "lm_head" in name:
        return "lm_head"
    if "norm" in name:
        return "norm"
    if "self_attn" in name or "attn" in name:
        return "attention"
    if "mlp" in name:
        return "mlp"
    return "other"


@dataclass
class InfluenceResult:
    S: np.ndarray  # [n_targets, n_domains], benefit convention (module doc)
    targets: list[str]
    domains: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {t: {d: float(self.S[i, j]) for j, d in enumerate(self.domains)} for i, t in enumerate(self.targets)}


class GroupInfluence:
    """Holds the n preconditioned target gradients of one model state and scores groups of data against them.

    >>> gi = GroupInfluence(model, hessian="adam", optimizer=opt)
    >>> gi.set_targets({"val": target_batches})
    >>> s = gi.score(domain_batches)                  # [n] benefit of that group for each target
    >>> S = gi.matrix({"a": batches_a, "b": batches_b})  # [n, m]
    >>> gi.release()
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        hessian: str = "identity",
        optimizer: torch.optim.Optimizer | None = None,
        kfac_batches: BatchSource | None = None,
        params: str = "all",
        projection_dim: int | None = None,
        projection_seed: int = 0,
        projection_kind: str = "gaussian",
        damping: float = 1e-3,
        kfac_max_dim: int = 4096,
        kfac_fisher: str = "sampled",
        kfac_seed: int = 0,
        kfac_rest: str = "diag",
        autocast: Callable[[], ContextManager] | None = None,
        device: torch.device | str | None = None,
        flops_per_token: float | None = None,
        loss_fn: LossFn | None = None,
    ):
        if hessian not in HESSIANS:
            raise ConfigError("mixer.hessian", f"expected one of {HESSIANS}, got {hessian!r}")
        if kfac_fisher not in FISHERS:
            raise ConfigError("mixer.kfac_fisher", f"expected one of {FISHERS}, got {kfac_fisher!r}")
        self.model = model
        self.hessian = hessian
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.autocast = autocast
        self.named = select_parameters(model, params)
        self.params = [p for _, p in self.named]
        if any(hasattr(p, "to_local") for p in self.params):  # DTensor: FSDP2-sharded parameters
            raise ConfigError(
                "trainer.parallel",
                "TiKMiX's influence gradients are not implemented for FSDP-sharded "
                "parameters yet; use trainer.parallel=ddp (or a single process)",
            )
        self.sizes = [p.numel() for p in self.params]
        self.n_params = int(sum(self.sizes))
        # held targets and dot products: fp32, or fp64 for an fp64 model (projections are always fp32)
        self._dtype = (
            torch.float64
            if any(p.dtype == torch.float64 for p in self.params) and projection_dim is None
            else torch.float32
        )
        self.flops_per_token = (
            float(flops_per_token) if flops_per_token else 6.0 * sum(p.numel() for p in model.parameters())
        )
        self._custom_loss = loss_fn
        self.projector = (
            Projector(projection_dim, projection_seed, projection_kind, self.device)
            if projection_dim is not None
            else None
        )
        self.targets: list[str] = []
        self._T: torch.Tensor | None = None  # [n, N] or [n, k]: the held target gradients
        self._target_src: dict[str, Any] = {}  # kept for score_lookahead's target losses
        self._U: list[torch.Tensor] = []  # the domains' preconditioned gradients (matrix(keep_directions=True))
        self._base_loss: np.ndarray | None = None  # [n] target losses at θ (score_lookahead)
        # Σ over scored groups of |per-parameter contribution| to each S entry (no projection only): which
        # blocks carry the influence (module doc, K-FAC "rest")
        self.block_abs: dict[str, float] = {}
        self.tokens = {"targets": {}, "groups": 0, "kfac": 0}
        self.flops = {"gradients": 0.0, "kfac": 0.0, "projection": 0.0, "dots": 0.0, "lookahead": 0.0}
        self.norms: dict[str, Any] = {"target_grad": {}, "target_precond": {}}
        self.wall_s = 0.0

        self.optimizer = optimizer
        self._adam_groups: dict[int, dict] = {}
        self.kfac: KFAC | None = None
        t0 = time.perf_counter()
        if hessian == "adam":
            if optimizer is None:
                raise ConfigError("mixer.hessian", "hessian=adam needs the optimiser (its second moments)")
            self._adam_groups = _adam_groups(optimizer)
        elif hessian == "kfac":
            if kfac_batches is None:
                raise ConfigError("mixer.hessian", "hessian=kfac needs a training sample to estimate the factors")
            self.kfac = KFAC(
                model,
                self.params,
                damping=damping,
                max_dim=kfac_max_dim,
                rest=kfac_rest,
                names=[n for n, _ in self.named],
            )
            gen = None
            if kfac_fisher == "sampled":
                gen = torch.Generator(device=self.device)
                gen.manual_seed(int(kfac_seed))
            with self._grad_scope():
                self.kfac.collect(model, _as_iterable(kfac_batches), lambda m, b: self._loss(m, b, gen))
            self.tokens["kfac"] = self.kfac.tokens
            self.flops["kfac"] += self.kfac.tokens * self.flops_per_token + self.kfac.flops
        self.wall_s += time.perf_counter() - t0

    # internals ------------------------------------------------------------------------------------------
    def _loss(self, model: nn.Module, batch: Batch, gen: torch.Generator | None = None):
        if self._custom_loss is not None:
            return self._custom_loss(model, batch)
        return batch_loss_sum(model, batch, device=self.device, autocast=self.autocast, sample_generator=gen)

    @contextlib.contextmanager
    def _grad_scope(self):
        """Gradients enabled and cleared before and after. ``requires_grad`` is never toggled (a DDP-wrapped
        model expects every parameter's gradient): unselected parameters get gradients that are ignored."""
        try:
            with torch.enable_grad():
                self.model.zero_grad(set_to_none=True)
                yield
        finally:
            self.model.zero_grad(set_to_none=True)

    def _accumulate(self, batches: Iterable[Batch]) -> tuple[int, int, float]:
        """Mean-token-loss gradient of ``batches`` into the selected params' ``.grad``. -> (labelled, inputs, loss)."""
        self.model.zero_grad(set_to_none=True)
        n_lab = n_in = 0
        loss_total = 0.0
        for batch in batches:
            loss, nl, ni = self._loss(self.model, batch)
            if nl == 0:
                n_in += ni
                continue
            loss.backward()
            n_lab += nl
            n_in += ni
            loss_total += float(loss.detach())
        self.flops["gradients"] += n_in * self.flops_per_token
        if n_lab == 0:
            raise DataError("a gradient sample has no labelled tokens (all labels are -100, or it is empty)")
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            else:
                p.grad.div_(n_lab)
        return n_lab, n_in, loss_total / n_lab

    def _grad_norm(self) -> float:
        return float(torch.sqrt(sum((p.grad.to(_acc_dtype(p)) ** 2).sum() for p in self.params)))

    def _precondition_(self) -> None:
        if self.hessian == "adam":
            for p in self.params:
                d = _adam_diag(self.optimizer, p, self._adam_groups.get(id(p)))
                if d is not None:
                    p.grad.mul_(d.to(p.grad.dtype))
            self.flops["gradients"] += self.n_params
        elif self.hessian == "kfac":
            f0 = self.kfac.flops
            self.kfac.precondition_()
            self.flops["kfac"] += self.kfac.flops - f0

    def _store_grads(self, row: torch.Tensor) -> None:
        """Write the current gradient (projected, or flat) into ``row`` without a full-size temporary."""
        if self.projector is not None:
            f0 = self.projector.flops
            row.copy_(self.projector.project([p.grad for p in self.params]))
            self.flops["projection"] += self.projector.flops - f0
            return
        off = 0
        for p, n in zip(self.params, self.sizes):
            row[off : off + n].copy_(p.grad.reshape(-1))
            off += n

    # targets -------------------------------------------------------------------------------------------
    def _target_grad(self, name: str, src: Any) -> tuple[int, int, float]:
        """The target's gradient into ``.grad`` (mean of the parts' gradients for a CombinedTarget)."""
        if not isinstance(src, CombinedTarget):
            try:
                return self._accumulate(_as_iterable(src))
            except DataError as e:
                raise DataError(f"target {name!r}: {e}") from None
        acc = [torch.zeros_like(p.grad if p.grad is not None else p, dtype=_acc_dtype(p)) for p in self.params]
        n_lab = n_in = 0
        losses = []
        for part, psrc in src.parts.items():
            nl, ni, loss = self._target_grad(f"{name}/{part}", psrc)
            n_lab, n_in = n_lab + nl, n_in + ni
            losses.append(loss)
            for a, p in zip(acc, self.params):
                a.add_(p.grad.to(a.dtype))
        for a, p in zip(acc, self.params):
            p.grad = a.div_(len(src.parts)).to(p.dtype)
        return n_lab, n_in, float(np.mean(losses))

    def set_targets(self, targets: Mapping[str, BatchSource | "CombinedTarget"]) -> None:
        """Compute, precondition (and project) and hold the gradient of each target set."""
        t0 = time.perf_counter()
        self.release()
        names = list(targets)
        if not names:
            raise ConfigError("targets", "no target sets to measure influence against")
        dim = self.projector.k if self.projector is not None else self.n_params
        T = torch.empty(len(names), dim, device=self.device, dtype=self._dtype)
        base = np.zeros(len(names))
        with self._grad_scope():
            for i, name in enumerate(names):
                n_lab, n_in, loss = self._target_grad(name, targets[name])
                base[i] = loss
                self.tokens["targets"][name] = {"labelled": n_lab, "inputs": n_in, "loss": loss}
                self.norms["target_grad"][name] = self._grad_norm()
                self._precondition_()
                self.norms["target_precond"][name] = self._grad_norm()
                self._store_grads(T[i])
                for p in self.params:
                    p.grad = None
        self.targets = names
        self._T = T
        self._target_src = dict(targets)
        self._base_loss = base
        self.wall_s += time.perf_counter() - t0

    # scoring ---------------------------------------------------------------------------------------------
    def _dots(self) -> torch.Tensor:
        """[n] inner products of the held targets with the current ``.grad`` (tracking block shares)."""
        if self.projector is not None:
            f0 = self.projector.flops
            s = self._T @ self.projector.project([p.grad for p in self.params])
            self.flops["projection"] += self.projector.flops - f0
        else:
            s = torch.zeros(len(self.targets), device=self.device, dtype=self._dtype)
            off = 0
            for (name, p), n in zip(self.named, self.sizes):
                c = self._T[:, off : off + n] @ p.grad.reshape(-1).to(self._dtype)
                s += c
                self.block_abs[name] = self.block_abs.get(name, 0.0) + float(c.abs().sum())
                off += n
        self.flops["dots"] += 2.0 * self._T.numel()
        return s

    def score(self, batches: BatchSource, keep_direction: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
        """Benefit of one group (its mean-token gradient) for each held target: ([n], info). ``keep_direction``:
        also hold the group's preconditioned gradient u = H⁻¹ḡ (for :meth:`lookahead_composed`)."""
        if self._T is None:
            raise RuntimeError("set_targets() first")
        t0 = time.perf_counter()
        with self._grad_scope():
            n_lab, n_in, loss = self._accumulate(_as_iterable(batches))
            norm = self._grad_norm()
            out = self._dots().double().cpu().numpy()
            if keep_direction:
                self._precondition_()
                self._U.append(torch.cat([p.grad.reshape(-1).to(self._dtype) for p in self.params]))
        self.tokens["groups"] += n_in
        self.wall_s += time.perf_counter() - t0
        return out, {"labelled": n_lab, "inputs": n_in, "loss": loss, "grad_norm": norm}

    @torch.no_grad()
    def _eval_loss(self, src: Any) -> tuple[float, int]:
        """Mean-token loss of a target (mean over parts for a CombinedTarget) and the input tokens it took."""
        if isinstance(src, CombinedTarget):
            parts = [self._eval_loss(p) for p in src.parts.values()]
            return float(np.mean([x for x, _ in parts])), int(sum(n for _, n in parts))
        tot, n_lab, n_in = 0.0, 0, 0
        for batch in _as_iterable(src):
            loss, nl, ni = self._loss(self.model, batch)
            tot, n_lab, n_in = tot + float(loss), n_lab + nl, n_in + ni
        return tot / max(1, n_lab), n_in

    def score_lookahead(self, batches: BatchSource, eta: float) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """First-order benefit and finite-step benefit of one group (module doc): ([n] g_vᵀu, [n] P_v(w, η), info).

        u = H⁻¹ ḡ (the group's mean-token gradient, preconditioned as the targets are); the parameters
        step to θ − η·u, the target losses are measured there (forward passes only), and θ is restored
        exactly. P_v = (L_v(θ) − L_v(θ − η u)) / η, in the units of the first-order influence."""
        if self._T is None:
            raise RuntimeError("set_targets() first")
        if not (eta > 0 and math.isfinite(eta)):
            raise ConfigError("mixer.lookahead_steps", f"the lookahead step size must be a positive number, got {eta}")
        t0 = time.perf_counter()
        with self._grad_scope():
            n_lab, n_in, loss = self._accumulate(_as_iterable(batches))
            first = self._dots().double().cpu().numpy()
            self._precondition_()
            saved = [p.detach().clone() for p in self.params]
            try:
                with torch.no_grad():
                    for p in self.params:
                        p.sub_(eta * p.grad.to(p.dtype))
                stepped = [self._eval_loss(self._target_src[name]) for name in self.targets]
            finally:
                with torch.no_grad():
                    for p, x in zip(self.params, saved):
                        p.copy_(x)
        eval_tokens = sum(n for _, n in stepped)
        self.flops["lookahead"] += eval_tokens * self.flops_per_token / 3.0
        finite = (self._base_loss - np.array([x for x, _ in stepped])) / eta
        self.tokens["groups"] += n_in
        self.wall_s += time.perf_counter() - t0
        return (
            first,
            finite,
            {
                "labelled": n_lab,
                "inputs": n_in,
                "loss": loss,
                "eta": float(eta),
                "target_loss_after": [float(x) for x, _ in stepped],
            },
        )

    def lookahead_composed(self, w: np.ndarray, eta: float) -> np.ndarray:
        """Finite-step benefit [n] of the group that mixes the domains of the last :meth:`matrix` call (kept
        with ``keep_directions``) in proportions ``w``: the step θ − η·Σ_d w_d u_d, the target losses there,
        θ restored exactly. Its first order is S·w; every candidate shares the domains' samples, so the only
        difference between candidates is the mixture (no sampling noise between them)."""
        if not self._U:
            raise RuntimeError("matrix(..., keep_directions=True) first")
        t0 = time.perf_counter()
        step = torch.as_tensor(np.asarray(w, dtype=np.float64), dtype=self._dtype) @ torch.stack(self._U)
        saved = [p.detach().clone() for p in self.params]
        try:
            with torch.no_grad():
                off = 0
                for p, n in zip(self.params, self.sizes):
                    p.sub_(eta * step[off : off + n].view_as(p).to(p.dtype))
                    off += n
                stepped = [self._eval_loss(self._target_src[name]) for name in self.targets]
        finally:
            with torch.no_grad():
                for p, x in zip(self.params, saved):
                    p.copy_(x)
        self.flops["lookahead"] += sum(n for _, n in stepped) * self.flops_per_token / 3.0
        self.wall_s += time.perf_counter() - t0
        return (self._base_loss - np.array([x for x, _ in stepped])) / eta

    def block_shares(self, groups: Callable[[str], str] | None = None) -> dict[str, float]:
        """Share of Σ|S| contributions carried by each parameter (or by ``groups(name)``), over the groups
        scored so far; {} with a projection (the split is not available)."""
        tot = sum(self.block_abs.values())
        if not tot:
            return {}
        out: dict[str, float] = {}
        for name, v in self.block_abs.items():
            k = groups(name) if groups is not None else name
            out[k] = out.get(k, 0.0) + v / tot
        return out

    def matrix(self, groups: Mapping[str, BatchSource], keep_directions: bool = False) -> InfluenceResult:
        """S [n_targets, n_groups]; groups are streamed one at a time. ``keep_directions`` holds every group's
        preconditioned gradient (m full-size vectors: memory) for :meth:`lookahead_composed`."""
        cols, per = [], {}
        f0, w0 = self.total_flops(), self.wall_s
        if keep_directions and self.projector is not None:
            raise ConfigError(
                "mixer.candidate_sample",
                "composed candidates step the model along the domains' "
                "gradients, which a projection does not keep; set "
                "mixer.projection_dim=null or mixer.candidate_sample=own",
            )
        self._U = []
        for name, src in groups.items():
            try:
                s, inf = self.score(src, keep_direction=keep_directions)
            except DataError as e:
                raise DataError(f"group {name!r}: {e}") from None
            cols.append(s)
            per[name] = inf
        S = np.stack(cols, axis=1) if cols else np.zeros((len(self.targets), 0))
        info = self.summary()
        info["groups"] = per
        info["matrix_flops"] = self.total_flops() - f0
        info["matrix_wall_s"] = self.wall_s - w0
        return InfluenceResult(S=S, targets=list(self.targets), domains=list(groups), info=info)

    def total_flops(self) -> float:
        return float(sum(self.flops.values()))

    def summary(self) -> dict[str, Any]:
        return {
            "hessian": self.hessian,
            "n_params": self.n_params,
            "projection_dim": self.projector.k if self.projector is not None else None,
            "tokens": {
                "targets": dict(self.tokens["targets"]),
                "groups": self.tokens["groups"],
                "kfac": self.tokens["kfac"],
            },
            "flops": self.total_flops(),
            "flops_breakdown": dict(self.flops),
            "wall_s": self.wall_s,
            "norms": {k: dict(v) for k, v in self.norms.items()},
            "kfac_skipped": dict(self.kfac.skipped) if self.kfac is not None else {},
            "kfac_diag": sorted(self.kfac.diag_names.values()) if self.kfac is not None else [],
            "block_share": self.block_shares(block_kind),
        }

    @property
    def held_targets(self) -> torch.Tensor | None:
        """The held target vectors [n, N] (preconditioned; flat in parameter order) or [n, k] (projected)."""
        return self._T

    def release(self) -> None:
        self._T = None
        self._U = []
        self.targets = []
        self._target_src = {}
        self._base_loss = None


def group_influence(
    model: nn.Module,
    targets: Mapping[str, BatchSource],
    domains: Mapping[str, BatchSource],
    **kwargs: Any,
) -> InfluenceResult:
    """S[v, d] = g_vᵀ H⁻¹ ḡ_d for every target v and domain d (benefit convention; see the module doc).
    ``kwargs`` go to :class:`GroupInfluence` (hessian, optimizer, kfac_batches, params, projection_dim, ...)."""
    gi = GroupInfluence(model, **kwargs)
    try:
        gi.set_targets(targets)
        res = gi.matrix(domains)
        res.info["wall_s"] = gi.wall_s
        return res
    finally:
        gi.release()


def gradient_alignment(
    model: nn.Module,
    targets: Mapping[str, BatchSource],
    domains: Mapping[str, BatchSource],
    **kwargs: Any,
) -> InfluenceResult:
    """DoGE/DGA alignment a[v, d] = ⟨∇L_d, ∇L_v⟩: group influence with the identity Hessian (same code path)."""
    if kwargs.pop("hessian", "identity") != "identity":
        raise ValueError("gradient_alignment is the identity-Hessian case; use group_influence for others")
    return group_influence(model, targets, domains, hessian="identity", **kwargs)
