"""A device profile from a few whole-network timings: per-layer regression, or a prior profile corrected.

Every model here is linear per layer, so a network's latency is a sum over its layers and the model is fit on
whole-network timings (the summed per-layer terms of each network against its measured time). Terms:
- the shape features of `predictors.layers` (MACs by op, activation traffic, one per block, one per non-block
  layer, weights, ...), and
- with a prior profile, the prior's own per-layer prediction, whole or split by op type (dense convs and the
  head; MBConv blocks by kernel size).
A candidate model ties terms into a few columns that share one non-negative coefficient (e.g. all MACs
terms), fit by least squares on relative error. `fit_timings` scores each candidate by leave-one-out on the
timed networks (MAPE, share within 10%, Kendall tau) and picks the lowest LOO MAPE, the fewest parameters
among those within 5% (relative) of it: with three timed networks that is a global scale of the prior, with
forty the full per-layer regression may win. A model with p parameters needs p + 1 timed networks (p to fit
and one more for leave-one-out); only candidates the timings can support compete.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from elastic.errors import OFAError
from elastic.netspec import NetSpec
from predictors.domain import domain_of_nets
from predictors.layer_regression import LayerRegression, nnls_relative
from predictors.layers import FEATURES, N_FEATURES, Layer, layer_features, net_layers
from predictors.metrics import latency_quality
from predictors.profiles import Profile, profile_from_dict

PRIOR_TERMS = ("prior:dense", "prior:k3", "prior:k5", "prior:k7")
TERMS = FEATURES + PRIOR_TERMS
TERM_INDEX = {t: i for i, t in enumerate(TERMS)}

_MACS = ("mb_expand_mmacs", "mb_dw3_mmacs", "mb_dw5_mmacs", "mb_dw7_mmacs", "mb_project_mmacs", "conv_mmacs")
_ACT = ("mb_mid_mact", "mb_io_mact", "conv_mact", "pool_mact", "se_mact", "hswish_mact")
_WEIGHTS = ("mb_weights_m", "conv_weights_m")

# name -> columns (each a tuple of terms sharing one coefficient); order = from simple to rich
CANDIDATES: dict[str, tuple[tuple[str, ...], ...]] = {
    "macs": (_MACS, ("head_const",)),
    "macs+memory": (_MACS, _ACT, ("mb_const",), ("head_const",)),
    "macs+memory+weights": (_MACS, _ACT, _WEIGHTS, ("mb_const",), ("head_const",)),
    "per-layer": tuple((f,) for f in FEATURES),
    "scale": (PRIOR_TERMS,),
    "scale+overhead": (PRIOR_TERMS, ("head_const",)),
    "scale+per-layer-overhead": (PRIOR_TERMS, ("mb_const",), ("head_const",)),
    "per-op-scales": tuple((t,) for t in PRIOR_TERMS) + (("head_const",),),
    "scale+macs+memory": (PRIOR_TERMS, _MACS, _ACT, ("mb_const",), ("head_const",)),
}
PRIOR_FREE = tuple(n for n, cols in CANDIDATES.items() if not any(t in PRIOR_TERMS for c in cols for t in c))
TIE = 0.05  # candidates within 5% (relative) of the best LOO MAPE count as tied; the fewest parameters wins


def n_params(model: str) -> int:
    return len(CANDIDATES[model])


def nets_needed(model: str) -> int:
    """Timed networks a model needs: one per parameter to fit it, one more to check it by leave-one-out."""
    return n_params(model) + 1


def prior_group(layer: Layer) -> str:
    if layer.op != "mbconv":
        return "prior:dense"
    return {3: "prior:k3", 5: "prior:k5", 7: "prior:k7"}[min((3, 5, 7), key=lambda k: abs(k - layer.kernel))]


class Transfer:
    """A prior profile's per-layer latency times per-op-type scales, plus per-layer shape terms."""

    def __init__(self, prior: Profile, coef: dict[str, float], model: str):
        self.prior, self.model = prior, model
        unknown = set(coef) - set(TERMS)
        if unknown:
            raise ValueError(f"unknown transfer terms {sorted(unknown)}")
        self.coef = {t: float(v) for t, v in coef.items()}
        self.feature_coef = np.array([self.coef.get(f, 0.0) for f in FEATURES])
        self._prior_pred = None

    def prior_layer_cost(self, layer: Layer) -> float:
        if self._prior_pred is None:
            from predictors.latency import LatencyPredictor

            self._prior_pred = LatencyPredictor(self.prior)
        return self._prior_pred.layer_cost(layer)

    def layer_cost(self, layer: Layer) -> float:
        value = float(layer_features(layer) @ self.feature_coef)
        scale = self.coef.get(prior_group(layer), 0.0)
        if scale:
            value += scale * self.prior_layer_cost(layer)
        return value

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "coef": self.coef, "prior": self.prior.to_dict()}

    @classmethod
    def from_dict(cls, data: Any, source: str) -> "Transfer":
        if not isinstance(data, dict) or not isinstance(data.get("prior"), dict) or not isinstance(data.get("coef"), dict):
            raise OFAError(f"device profile {source} is not a valid latency profile: a transfer profile needs "
                           "'transfer': {'model', 'coef', 'prior'}")
        prior = profile_from_dict(data["prior"], f"{source} (its prior)")
        try:
            return cls(prior, {str(k): float(v) for k, v in data["coef"].items()}, str(data.get("model", "")))
        except (TypeError, ValueError) as exc:
            raise OFAError(f"device profile {source} is not a valid latency profile: {exc}") from None


# ---- fitting ---------------------------------------------------------------------------------------------
def net_terms(net: NetSpec, prior_pred=None) -> np.ndarray:
    """Per-network sums of every term (features, then the prior's latency per op group)."""
    layers = net_layers(net)
    out = np.zeros(len(TERMS))
    for layer in layers:
        out[:N_FEATURES] += layer_features(layer)
    if prior_pred is not None:
        costs = prior_pred.layer_costs(net)
        for layer, cost in zip(layers, costs):
            out[TERM_INDEX[prior_group(layer)]] += cost
    return out


def _columns(T: np.ndarray, model: str) -> np.ndarray:
    return np.stack([T[:, [TERM_INDEX[t] for t in col]].sum(axis=1) for col in CANDIDATES[model]], axis=1)


def _fit_columns(Z: np.ndarray, y: np.ndarray) -> np.ndarray:
    return nnls_relative(Z, y)


def loo_predictions(T: np.ndarray, y: np.ndarray, model: str) -> np.ndarray:
    Z = _columns(T, model)
    pred = np.empty(len(y))
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        pred[i] = Z[i] @ _fit_columns(Z[keep], y[keep])
    return pred


@dataclass
class FitResult:
    model: str
    coef: dict[str, float]        # term -> coefficient (tied columns share a value)
    loo: dict[str, float]
    candidates: list[dict[str, Any]]
    loo_pred: np.ndarray


def candidate_models(has_prior: bool) -> tuple[str, ...]:
    return tuple(CANDIDATES) if has_prior else PRIOR_FREE


def fit_terms(T: np.ndarray, y: np.ndarray, has_prior: bool, model: str = "auto", tie: float = TIE) -> FitResult:
    """Choose (or take `model`) and fit on per-network terms `T` and timings `y` (ms); `tie`: candidates
    within this relative margin of the best LOO MAPE count as tied (the fewest parameters wins)."""
    y = np.asarray(y, float)
    n = len(y)
    pool = candidate_models(has_prior)
    if model != "auto":
        if model not in CANDIDATES:
            raise OFAError(f"unknown model '{model}'; allowed: auto, {', '.join(pool)}")
        if model not in pool:
            raise OFAError(f"model '{model}' corrects a prior profile; give --prior, or use one of {', '.join(PRIOR_FREE)}")
        if n < nets_needed(model):
            raise OFAError(f"{n} timed networks are too few for model '{model}' ({n_params(model)} parameters): it needs "
                           f"at least {nets_needed(model)} ({n_params(model)} to fit, one more to check it by leave-one-out)")
        pool = (model,)
    usable = [m for m in pool if n >= nets_needed(m)]
    if not usable:
        least = min(pool, key=nets_needed)
        raise OFAError(f"{n} timed network{'s are' if n != 1 else ' is'} too few: the smallest model "
                       f"{'with' if has_prior else 'without'} a prior ('{least}', {n_params(least)} parameter"
                       f"{'s' if n_params(least) > 1 else ''}) needs at least {nets_needed(least)} "
                       f"({n_params(least)} to fit, one more to check it by leave-one-out)")
    rows, preds = [], {}
    for m in pool:
        row: dict[str, Any] = {"model": m, "params": n_params(m), "needs": nets_needed(m)}
        if m in usable:
            preds[m] = loo_predictions(T, y, m)
            row["loo"] = latency_quality(y, preds[m], within=(0.10,))
        rows.append(row)
    best = min(r["loo"]["mape_pct"] for r in rows if "loo" in r)
    tied = [r for r in rows if "loo" in r and r["loo"]["mape_pct"] <= best * (1 + tie) + 1e-12]
    chosen = min(tied, key=lambda r: (r["params"], r["loo"]["mape_pct"]))["model"]
    for r in rows:
        r["chosen"] = r["model"] == chosen
    sol = _fit_columns(_columns(T, chosen), y)
    coef: dict[str, float] = {}
    for col, c in zip(CANDIDATES[chosen], sol):
        for t in col:
            coef[t] = float(c)
    return FitResult(chosen, coef, latency_quality(y, preds[chosen], within=(0.10,)), rows, preds[chosen])


def fit_timings(nets: Sequence[NetSpec], ms: Sequence[float], name: str, prior: Profile | None = None,
                model: str = "auto", batch: int = 1, source: str = "", names: Sequence[str] | None = None,
                spaces: Sequence[str] = (), tie: float = TIE) -> Profile:
    """A profile from whole-network timings of `nets` (ms), with or without a prior profile."""
    from predictors.latency import LatencyPredictor

    ms = np.asarray(ms, float)
    if len(nets) != len(ms):
        raise ValueError(f"{len(nets)} networks but {len(ms)} timings")
    families = sorted({n.family for n in nets})
    prior_pred = None
    if prior is not None:
        if prior.kind == "proxy" and prior.proxy == "params":
            raise OFAError("the 'params' proxy cannot be a prior: it prices whole networks, not layers; "
                           "use flops, a latency device, or no prior")
        other = [f for f in families if f not in prior.families]
        if other:
            raise OFAError(f"prior '{prior.name}' models {'/'.join(prior.families)} networks, the timed networks "
                           f"include {'/'.join(other)} ones; choose a prior of the same space family")
        prior_pred = LatencyPredictor(prior)
    T = np.stack([net_terms(n, prior_pred) for n in nets])
    fit = fit_terms(T, ms, prior is not None, model, tie)
    res = [n.resolution for n in nets]
    domain = domain_of_nets(f"latency profile '{name}'", families, res, spaces,
                            f"{len(nets)} timed networks at {min(res)}-{max(res)} px" if len(set(res)) > 1
                            else f"{len(nets)} timed networks at {res[0]} px")
    q = fit.loo
    summary = (f"leave-one-out on {len(nets)} timed nets: MAPE {q['mape_pct']:.1f}%, "
               f"{100 * q['within_10pct']:.0f}% within 10%, tau {q['kendall_tau']:.2f} "
               f"(model {fit.model}, {n_params(fit.model)} parameters, needs {nets_needed(fit.model)} nets)")
    notes = []
    if prior is not None and prior.domain is not None:
        off = sum(not prior.domain.holds(n.family, n.resolution) for n in nets)
        if off:
            notes.append(f"{off} of the timed networks lie outside the prior's domain ({prior.domain.describe()})")
    error = {"summary": summary, "timed_nets": len(nets), "loo": q, "chosen": fit.model,
             "params": n_params(fit.model), "needs": nets_needed(fit.model), "candidates": fit.candidates,
             "per_net": [{"network": (names[i] if names else str(i)), "ms": float(ms[i]),
                          "loo_pred_ms": float(fit.loo_pred[i])} for i in range(len(ms))],
             "notes": notes}
    meaning = "batch-1 latency" if batch == 1 else f"time per batch of {batch}"
    prov = (f"fit with `ofa profile fit` on {time.strftime('%Y-%m-%d')} from {len(nets)} whole-network timings"
            + (f" ({source})" if source else "") + (f", prior '{prior.name}'" if prior is not None else ""))
    extra = {"device": "external", "model": fit.model, "coef": fit.coef,
             "prior": prior.name if prior is not None else None, "timings_ms": [float(v) for v in ms]}
    common = dict(name=name, unit="ms", families=tuple(families), space=spaces[0] if len(set(spaces)) == 1 else None,
                  provenance=prov, error=error, extra=extra, domain=domain, batch=batch)
    if fit.model in PRIOR_FREE:
        reg = LayerRegression([fit.coef.get(f, 0.0) for f in FEATURES])
        return Profile(kind="regression", regression=reg,
                       description=f"per-layer model ({fit.model}) fit on {len(nets)} timed networks, {meaning}",
                       **common)
    transfer = Transfer(prior, {t: v for t, v in fit.coef.items()}, fit.model)
    return Profile(kind="transfer", transfer=transfer,
                   description=f"prior '{prior.name}' corrected ({fit.model}) by {len(nets)} timed networks, {meaning}",
                   **common)


def format_fit(profile: Profile) -> str:
    """The candidate table and the choice, for the terminal."""
    err = profile.error
    lines = [f"{'model':26s} {'params':>6s} {'LOO MAPE':>9s} {'within 10%':>10s} {'tau':>6s}"]
    for r in err["candidates"]:
        mark = "*" if r.get("chosen") else " "
        if "loo" in r:
            q = r["loo"]
            lines.append(f"{mark} {r['model']:24s} {r['params']:6d} {q['mape_pct']:8.1f}% {100 * q['within_10pct']:9.0f}% "
                         f"{q['kendall_tau']:6.2f}")
        else:
            lines.append(f"  {r['model']:24s} {r['params']:6d}   needs {r['needs']} timed nets")
    lines.append(f"chosen: {err['chosen']} ({err['params']} parameters; needs at least {err['needs']} timed networks)")
    lines += [f"note: {n}" for n in err.get("notes", [])]
    return "\n".join(lines)


__all__ = ["CANDIDATES", "Transfer", "fit_terms", "fit_timings", "format_fit", "nets_needed", "net_terms"]
