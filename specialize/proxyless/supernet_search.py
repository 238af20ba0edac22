"""ProxylessNAS over a trained once-for-all supernet: `search_over_supernet(...) -> (arch, info)`.

Architecture parameters (`SupernetAlphas`): logits per elastic choice of the space -- kernel and expand ratio
per block, depth per stage and, where the latency table covers several, the input resolution. The supernet's
weights stay frozen (default) or are fine-tuned on single sampled paths between architecture steps (a copy; the
caller's supernet is never modified). BN layers use batch statistics with their running statistics untouched.

One architecture step is a binarized forward of the supernet: for every choice two candidates are sampled from
softmax(alpha) and one of them is active (the others are not run in forward), so the activations kept are those
of one subnet. The gradient reaches alpha through the gates, dL/dalpha_i = sum_j dL/dg_j p_j (delta_ij - p_i)
over the two sampled candidates (gates.py), where dL/dg_j = <dL/d out, o_j> is the inner product of the gradient
at the choice's output with the output of candidate j:
- kernel / expand of block b: o_j is block b's output with that kernel (expand), the other dimension at its active
  value; computed in backward, without autograd, on the saved input (no memory kept);
- depth of stage s: o_d is the stage's output after d blocks; a depth below the active one is an intermediate
  output the graph keeps anyway, a deeper one is run without autograd (one feature map kept);
- resolution: o_r is the network's logits at resolution r, run without autograd (only the logits kept).
The expected latency (expected_latency.SupernetLatencyTable, from the device's latency predictor) is a
differentiable function of all the probabilities; loss = CE x (E[lat]/target)^beta or CE + lambda E[lat]/target
(by default one-sided: no pull below the target), or the REINFORCE estimator. The final arch is the argmax of alpha; if it misses the budget the latency term is
strengthened and the search continues, then a greedy move to cheaper choices (saying so in `info["note"]`).
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from elastic.arch import Arch
from elastic.choice_indices import arch_choice_indices
from elastic.errors import OFAError
from elastic.spaces import SpaceSpec
from specialize.proxyless.arch_step import ESTIMATORS, LossSettings, ReinforceState, arch_update
from specialize.proxyless.expected_latency import SupernetLatencyTable
from specialize.proxyless.feasible import greedy_fill_budget
from specialize.proxyless.gates import binary_gates, sample_paths
from specialize.proxyless.meet_budget import meet_budget


# ---- architecture parameters ----------------------------------------------------------------------------
class SupernetAlphas(nn.Module):
    """Logits over the elastic choices of `space`: `k` (blocks x kernels), `e` (blocks x expands), `d.<s>` (per
    stage depth choices), `r` (resolutions). All start at zero (uniform)."""

    def __init__(self, space: SpaceSpec, resolutions: Sequence[int]):
        super().__init__()
        self.space = space
        self.resolutions = tuple(resolutions)
        self.k = nn.Parameter(torch.zeros(space.n_blocks, len(space.ks_choices)))
        self.e = nn.Parameter(torch.zeros(space.n_blocks, len(space.e_choices)))
        self.d = nn.ParameterList([nn.Parameter(torch.zeros(len(space.depth_choices(s))))
                                   for s in range(space.n_stages)])
        self.r = nn.Parameter(torch.zeros(len(self.resolutions)))

    # the flat list of choices: (logits, row) -- used for sampling, rescaling, REINFORCE and the greedy fallback
    def choices(self) -> list[torch.Tensor]:
        return [self.k[b] for b in range(self.space.n_blocks)] + [self.e[b] for b in range(self.space.n_blocks)] \
            + list(self.d) + [self.r]

    def probs(self) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor]:
        return (F.softmax(self.k, -1), F.softmax(self.e, -1), [F.softmax(a, -1) for a in self.d],
                F.softmax(self.r, -1))

    def decode(self, idx: Sequence[int]) -> Arch:
        """Arch of a flat index vector (one index per choice, in `choices()` order)."""
        sp, nb = self.space, self.space.n_blocks
        ks = tuple(sp.ks_choices[i] for i in idx[:nb])
        es = tuple(sp.e_choices[i] for i in idx[nb:2 * nb])
        ds = tuple(sp.depth_choices(s)[i] for s, i in enumerate(idx[2 * nb:2 * nb + sp.n_stages]))
        return Arch(ks, es, ds, self.resolutions[idx[-1]])

    def encode(self, arch: Arch) -> list[int]:
        """The flat index vector of `arch` (inverse of `decode`)."""
        ki, ei, di, ri = arch_choice_indices(self.space, arch, self.resolutions)
        return [*ki, *ei, *di, ri]

    def argmax_indices(self) -> list[int]:
        return [int(torch.argmax(c.detach())) for c in self.choices()]

    def argmax(self) -> Arch:
        return self.decode(self.argmax_indices())

    def summary(self) -> dict[str, Any]:
        p_k, p_e, p_d, p_r = (t.detach() if isinstance(t, torch.Tensor) else [x.detach() for x in t]
                              for t in self.probs())
        rnd = lambda t: [round(float(v), 4) for v in t]  # noqa: E731
        return {"kernel": [rnd(r) for r in p_k], "expand": [rnd(r) for r in p_e], "depth": [rnd(r) for r in p_d],
                "resolution": rnd(p_r)}


# ---- gated forward --------------------------------------------------------------------------------------
class _GatedBlock(torch.autograd.Function):
    """Output of an elastic block at its active (kernel, expand); backward: the input gradient through it and
    dL/dg for the sampled kernels and expands (other candidates recomputed without autograd)."""

    @staticmethod
    def forward(ctx, x, g_k, g_e, block, ks, es, k_act, e_act):  # type: ignore[override]
        detached = x.detach()
        detached.requires_grad_(x.requires_grad)
        block.set_active(ks[k_act], es[e_act])
        with torch.enable_grad():
            out = block(detached)
        ctx.block, ctx.ks, ctx.es, ctx.k_act, ctx.e_act = block, ks, es, k_act, e_act
        ctx.save_for_backward(detached, out)
        return out.detach()

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        detached, out = ctx.saved_tensors
        grad_x = None
        if detached.requires_grad and out.requires_grad:
            (grad_x,) = torch.autograd.grad(out, detached, grad_out)
        blk, ks, es, ka, ea = ctx.block, ctx.ks, ctx.es, ctx.k_act, ctx.e_act
        gk = torch.zeros(len(ks), dtype=grad_out.dtype, device=grad_out.device)
        ge = torch.zeros(len(es), dtype=grad_out.dtype, device=grad_out.device)
        saved = (blk.active_kernel, blk.active_expand)
        with torch.no_grad():
            for i, k in enumerate(ks):
                if i == ka:
                    gk[i] = (out * grad_out).sum()
                else:
                    blk.set_active(k, es[ea])
                    gk[i] = (blk(detached.detach()) * grad_out).sum()
            for i, e in enumerate(es):
                if i == ea:
                    ge[i] = (out * grad_out).sum()
                else:
                    blk.set_active(ks[ka], e)
                    ge[i] = (blk(detached.detach()) * grad_out).sum()
        blk.set_active(*saved)
        return grad_x, gk, ge, None, None, None, None, None


@dataclass
class _Draw:
    """Sampled candidates of one choice: `subset` (indices into the choice list) and the active position in it."""
    subset: list[int]
    active: int

    @property
    def index(self) -> int:
        return self.subset[self.active]


def _draw(logits: torch.Tensor, n: int, gen: torch.Generator | None) -> _Draw:
    subset = sample_paths(logits, n, gen)
    if len(subset) == 1:
        return _Draw(subset.tolist(), 0)
    p = F.softmax(logits.detach()[subset], -1)
    return _Draw(subset.tolist(), int(torch.multinomial(p.cpu(), 1, generator=gen)))


def _gates(logits: torch.Tensor, d: _Draw) -> torch.Tensor:
    return binary_gates(logits, torch.as_tensor(d.subset, device=logits.device), d.active)


def _resize(x: torch.Tensor, r: int) -> torch.Tensor:
    return x if x.shape[-1] == r else F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)


class _Fn(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def gated_forward(supernet: nn.Module, alphas: SupernetAlphas, x: torch.Tensor, gen: torch.Generator | None,
                  search_resolution: bool) -> tuple[torch.Tensor, Arch, list[_Draw]]:
    """Binarized two-path forward (see module doc): logits of the active subnet with gates wired to alpha, the
    active arch, and the draws of every choice (in `alphas.choices()` order)."""
    sp = supernet.space
    nb = sp.n_blocks
    dk = [_draw(alphas.k[b], 2, gen) for b in range(nb)]
    de = [_draw(alphas.e[b], 2, gen) for b in range(nb)]
    dd = [_draw(alphas.d[s], 2, gen) for s in range(sp.n_stages)]
    dr = _draw(alphas.r, 2, gen) if search_resolution else _Draw([int(torch.argmax(alphas.r.detach()))], 0)
    arch = Arch(tuple(sp.ks_choices[d.index] for d in dk), tuple(sp.e_choices[d.index] for d in de),
                tuple(sp.depth_choices(s)[d.index] for s, d in enumerate(dd)), alphas.resolutions[dr.index])
    supernet.set_active(arch)
    blocks = supernet.elastic_blocks
    gk = [_gates(alphas.k[b], dk[b]) if len(dk[b].subset) > 1 else None for b in range(nb)]
    ge = [_gates(alphas.e[b], de[b]) if len(de[b].subset) > 1 else None for b in range(nb)]

    def run_block(b: int, h: torch.Tensor) -> torch.Tensor:
        if gk[b] is None and ge[b] is None:
            return blocks[b](h)
        ks = [sp.ks_choices[i] for i in dk[b].subset]
        es = [sp.e_choices[i] for i in de[b].subset]
        g_k = gk[b] if gk[b] is not None else torch.ones(1, device=h.device)
        g_e = ge[b] if ge[b] is not None else torch.ones(1, device=h.device)
        return _GatedBlock.apply(h, g_k, g_e, blocks[b], ks, es, dk[b].active, de[b].active)

    stage_fns = []
    start = 0
    for s in range(sp.n_stages):
        def stage(h: torch.Tensor, s=s, start=start) -> torch.Tensor:
            d = dd[s]
            depths = [sp.depth_choices(s)[i] for i in d.subset]
            act_depth = depths[d.active]
            outs: dict[int, torch.Tensor] = {}
            for j in range(max(depths)):
                if j < act_depth:
                    h = run_block(start + j, h)
                else:
                    with torch.no_grad():
                        blocks[start + j].set_active(sp.ks_choices[dk[start + j].index], sp.e_choices[de[start + j].index])
                        h = blocks[start + j](h.detach())
                if j + 1 in depths:
                    outs[j + 1] = h
            if len(depths) == 1:
                return outs[depths[0]]
            g = _gates(alphas.d[s], d)
            return sum(g[i] * outs[dep] for i, dep in enumerate(depths))
        stage_fns.append(_Fn(stage))
        start += sp.stage_max_depth[s]

    xr = _resize(x, arch.r)
    with supernet.running_blocks(stage_fns):
        logits = supernet(xr)
    if len(dr.subset) > 1:
        g = _gates(alphas.r, dr)
        parts = []
        for i, ri in enumerate(dr.subset):
            if i == dr.active:
                parts.append(g[i] * logits)
            else:
                with torch.no_grad():
                    supernet.set_active(Arch(arch.ks, arch.e, arch.d, alphas.resolutions[ri]))
                    other = supernet(_resize(x, alphas.resolutions[ri]))
                parts.append(g[i] * other)
        supernet.set_active(arch)
        logits = sum(parts)
    return logits, arch, dk + de + dd + [dr]


# ---- the search -----------------------------------------------------------------------------------------
@dataclass
class SupernetSearchConfig:
    steps: int = 300                 # (150 left the 3 ms pixel1 search 2.8 points behind evolution; 300: ahead)
    batch_size: int = 64             # when the data come as a bundle (anything with .loader(split, ...))
    arch_lr: float = 0.02             # Adam, betas (0, 0.999); higher than the paper (searches here are short)
    form: str = "mul"
    beta: float = 0.6
    lam: float = 0.1
    estimator: str = "two_path"
    one_sided: bool = True           # latency term only above the target (see loss.py)
    finetune_weights: bool = False
    weight_lr: float = 1e-3
    search_resolution: bool = True
    budget_rounds: int = 3
    budget_steps: int = 50
    fill_budget: bool = True         # spend what the argmax leaves of the budget (feasible.greedy_fill_budget)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.budget_rounds < 0 or self.budget_steps < 0:
            raise OFAError("proxyless search: steps, budget_rounds and budget_steps must be >= 0")
        if self.estimator not in ESTIMATORS:
            raise OFAError(f"unknown estimator '{self.estimator}'; allowed: {', '.join(ESTIMATORS)}")


@contextlib.contextmanager
def search_mode(model: nn.Module):
    """How the supernet runs in an architecture step: BN on batch statistics with its running statistics left
    as they are (momentum 0), dropout off (the loss of a sampled subnet should not be noisier than it is)."""
    was_training = model.training
    model.train()
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    drops = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in bns]
    for m in bns:
        m.momentum = 0.0
    for m in drops:
        m.eval()
    try:
        yield
    finally:
        for m, (mom, nbt) in zip(bns, saved):
            m.momentum = mom
            if nbt is not None:
                m.num_batches_tracked.copy_(nbt)
        model.train(was_training)


def _cycle(batches: Iterable) -> Iterator:
    while True:
        empty = True
        for b in batches:
            empty = False
            yield b
        if empty:
            raise OFAError("proxyless search got no data batches")


def search_over_supernet(supernet: nn.Module, latency: Any, budget_ms: float, batches: Iterable,
                         config: SupernetSearchConfig | None = None, *, resolutions: Sequence[int] | None = None,
                         weight_batches: Iterable | None = None,
                         progress: Callable[[str, int, int, dict], None] | None = None,
                         **overrides: Any) -> tuple[Arch, dict[str, Any]]:
    """ProxylessNAS over `supernet` for a latency budget; returns the argmax arch (meeting the budget) and info.

    latency: the device's latency predictor (`predictors.latency.get_latency_predictor(device, space)`, anything
      with `.predict(archs)`) or a prebuilt `SupernetLatencyTable`; `budget_ms` is in its unit.
    batches: iterable of (images, labels), normalized, any size (resized to each sampled resolution); cycled.
      A data bundle (`ofa.data.get_data(...)`, anything with `.loader(split, batch_size=, shuffle=, seed=)`) is
      read as its `val` split for the architecture steps and its `train` split for weight fine-tuning.
    resolutions: the resolutions searched (default: the space's); one value fixes the resolution.
    weight_batches: data for the weight fine-tuning steps (config.finetune_weights; default: `batches`).
    config / overrides: SupernetSearchConfig fields (steps=, form=, beta=, lam=, estimator=, ...).
    info: latency (predictor, of the returned arch), expected_latency, feasible_by, note, probs, history, ...
    """
    cfg = config or SupernetSearchConfig()
    if overrides:
        cfg = SupernetSearchConfig(**{**asdict(cfg), **overrides})
    space: SpaceSpec = supernet.space
    if not (isinstance(budget_ms, (int, float)) and math.isfinite(budget_ms) and budget_ms > 0):
        raise OFAError(f"latency budget must be a positive number, got {budget_ms!r}")
    t0 = time.time()
    if isinstance(latency, SupernetLatencyTable):
        res = space.pick_resolutions(resolutions) if resolutions else tuple(latency.resolutions)
        if not cfg.search_resolution:
            res = (max(res),)
        table, predictor = latency, None
        if tuple(table.resolutions) != res:
            raise OFAError(f"the latency table covers resolutions {list(table.resolutions)}; this search needs "
                           f"{list(res)} (build it with those, or pass resolutions=)")
    else:
        if not hasattr(latency, "predict"):
            raise OFAError("latency must be a latency predictor (with .predict(archs)) or a SupernetLatencyTable")
        res = space.pick_resolutions(resolutions or None)
        if not cfg.search_resolution:
            res = (max(res),)
        table, predictor = SupernetLatencyTable(space, latency, res), latency
    lat_of_archs = (lambda archs: np.asarray(predictor.predict(archs), dtype=np.float64)) if predictor is not None \
        else (lambda archs: np.array([table.of_arch(a) for a in archs]))
    search_res = cfg.search_resolution and len(res) > 1
    floor = lat_of_archs([space.smallest(r) for r in res])
    if floor.min() > budget_ms:
        raise OFAError(f"latency budget {budget_ms:g} {getattr(table, 'unit', 'ms')} cannot be met: the smallest subnet "
                       f"of {space.name} costs {floor.min():.4g} at {res[int(np.argmin(floor))]}px on this device; "
                       f"raise the budget")

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = next(supernet.parameters()).device
    alphas = SupernetAlphas(space, res).to(device)
    a_opt = torch.optim.Adam(alphas.parameters(), lr=cfg.arch_lr, betas=(0.0, 0.999), eps=1e-8)
    settings = LossSettings(float(budget_ms), cfg.form, cfg.beta, cfg.lam, cfg.estimator, cfg.one_sided)
    rl = ReinforceState()

    net = copy.deepcopy(supernet) if cfg.finetune_weights else supernet
    was_training = net.training
    saved_arch = getattr(net, "active_arch", None)
    grads = [p.requires_grad for p in net.parameters()]
    for p in net.parameters():
        p.requires_grad_(cfg.finetune_weights)
    w_opt = torch.optim.SGD(net.parameters(), lr=cfg.weight_lr, momentum=0.9) if cfg.finetune_weights else None
    if hasattr(batches, "loader"):   # a data bundle: alpha on its val split, weight fine-tuning on its train split
        bundle = batches
        batches = bundle.loader("val", batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed)
        if weight_batches is None:
            weight_batches = bundle.loader("train", batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed + 1)
    data = _cycle(batches)
    wdata = _cycle(weight_batches) if weight_batches is not None else data
    history: list[dict[str, Any]] = []

    def expected() -> torch.Tensor:
        p_k, p_e, p_d, p_r = alphas.probs()
        return table.expected(p_k, p_e, p_d, p_r if len(res) > 1 else None)

    def weight_step() -> float:
        x, y = next(wdata)
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            idx = [int(torch.multinomial(F.softmax(c.detach(), -1).cpu(), 1, generator=gen)) for c in alphas.choices()]
        arch = alphas.decode(idx)
        net.set_active(arch)
        w_opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(_resize(x, arch.r)), y)
        loss.backward()
        w_opt.step()
        return float(loss.detach())

    def arch_step(phase: str, step: int, total: int) -> None:
        row: dict[str, Any] = {"phase": phase, "step": step}
        if w_opt is not None:
            row["weight_ce"] = weight_step()
        x, y = next(data)
        x, y = x.to(device), y.to(device)

        def two_path() -> tuple[torch.Tensor, list[list[int]]]:
            logits, _, draws = gated_forward(net, alphas, x, gen, search_res)
            return F.cross_entropy(logits, y), [d.subset for d in draws]

        def single_path() -> tuple[torch.Tensor, float, list[int]]:
            with torch.no_grad():
                idx = [int(torch.multinomial(F.softmax(c.detach(), -1).cpu(), 1, generator=gen)) for c in alphas.choices()]
                arch = alphas.decode(idx)
                net.set_active(arch)
                ce = F.cross_entropy(net(_resize(x, arch.r)), y)
            return ce, float(lat_of_archs([arch])[0]), idx

        with search_mode(net):   # backward recomputes candidates: it runs in the same mode as forward
            row.update(arch_update(a_opt, settings, alphas.choices, expected, two_path, single_path, rl))
        history.append(row)
        if progress is not None:
            progress(phase, step, total, row)

    try:
        net.train()
        for step in range(cfg.steps):
            arch_step("search", step, cfg.steps)
        met = meet_budget(float(budget_ms), settings, cfg.budget_rounds, cfg.budget_steps, train_step=arch_step,
                          argmax=alphas.argmax_indices, logits=alphas.choices,
                          latency_of=lambda rows: lat_of_archs([alphas.decode(r) for r in rows]))
        arch, lat, feasible_by, note = alphas.decode(met.indices), met.latency, met.feasible_by, None
        if met.missed is not None:
            note = (f"the most probable arch ({met.missed:.4g}) missed the budget {budget_ms:g} after {met.rounds} "
                    f"strengthening round(s); moved {met.moves} choice(s) to cheaper values to meet it")
        if cfg.fill_budget and lat < budget_ms:
            log_probs = [F.log_softmax(c.detach().double(), -1).cpu().numpy() for c in alphas.choices()]
            lat_before = lat
            idx, lat, moves = greedy_fill_budget(alphas.encode(arch), log_probs,
                                                 lambda rows: lat_of_archs([alphas.decode(r) for r in rows]),
                                                 float(budget_ms))
            if moves:
                arch = alphas.decode(idx)
                filled = f"filled the budget from {lat_before:.4g} ({moves} change(s))"
                feasible_by = f"{feasible_by}; {filled}"
        arch = space.validate(arch)
        with torch.no_grad():
            elat = float(expected())
    finally:
        for p, g in zip(net.parameters(), grads):
            p.requires_grad_(g)
        net.train(was_training)
        if saved_arch is not None:
            net.set_active(saved_arch)
    info = {
        "backend": "proxyless", "latency": lat, "expected_latency": elat, "budget": float(budget_ms),
        "unit": getattr(table, "unit", "ms"), "feasible_by": feasible_by, "note": note,
        "probs": alphas.summary(), "history": history, "seconds": time.time() - t0, "config": asdict(cfg),
        "resolutions": list(res), "finetuned_supernet": net if cfg.finetune_weights else None,
    }
    return arch, info
