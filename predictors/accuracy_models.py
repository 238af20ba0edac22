"""The models behind `predictors.accuracy.AccuracyPredictor`: what each kind is fit on and how it is built.

Four kinds:
- `mlp`   OFA's predictor shape: an MLP with ReLUs on the one-hot encoding (`predictors.encoding.OneHotEncoding`),
          trained with torch (`train_mlp`); inference is plain numpy matmuls (`mlp_forward`: fast on batches, no
          autograd).
- `gbr`   scikit-learn gradient boosting on the one-hot encoding.
- `gp`    scikit-learn Gaussian process (constant * RBF with one length scale per feature + white noise) on
          the standardized `ordinal_macs_features` (every block's kernel and expand as values, depths, resolution,
          log MACs).
- `ridge` scikit-learn ridge regression on `rich_features` plus the one-hot.
`make_sklearn_model` builds the scikit-learn ones, `kind_features` gives the matrix a kind is fit on, and
`DEFAULT_HP` holds each kind's hyperparameters (the feature set among them).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Sequence

import numpy as np

from elastic.arch import Arch
from elastic.errors import OFAError
from elastic.spaces import SpaceSpec
from predictors.encoding import OneHotEncoding, arch_arrays, ordinal_features, ordinal_macs_features, rich_features

KINDS = ("mlp", "gbr", "gp", "ridge")

# `features`: what a kind is fit on -- "onehot" (OFA's encoding), "ordinal" (`ordinal_features`), "rich"
# (`rich_features`: per-stage sums, r, log MACs/params) or "rich+onehot". Measured on 400 subnets of a Fashion-MNIST run (5-fold CV, Kendall tau):
# gradient boosting 0.78 on the one-hot vs 0.72 on rich+onehot and 0.48 on rich alone (accuracy there depends on
# which block takes which choice, not on stage sums); the MLP 0.755 with weight decay 3e-2 vs 0.67 with 1e-4.
# On 800 subnets, depth-4 trees (800, lr 0.03) gave 0.837 vs 0.811 for depth 3 (400, lr 0.05); equal at 200-400.
# "ordinal" (`ordinal_features`: each block's k and e as values, depths, r) for the GP: on the budgeted main job's
# supernet (2026-12-03, `bench/predictor_label_noise.py`; 5-fold CV tau, 240 subnets on 5000 validation images /
# the job's own 427 on its informative 2000) 0.80 / 0.81, against 0.50 / 0.58 for the GP on `rich` and 0.55 / 0.64
# for gradient boosting on the one-hot; 100 subnets already rank the job's last 127 at tau 0.74 (0.47 for GBR).
# The GP's marginal-likelihood search is capped at GP_MAX_EVALS evaluations: on a budgeted main job's 216 subnets
# (2026-12-03, 6 random held-out splits of 43) a cap of 50 gives held-out tau 0.695 against 0.692 uncapped, at a
# quarter of the time (the uncapped search took 200-340 evaluations; 60 leaves a margin), and it makes the fit's cost predictable
# (`gp_likelihood_seconds`). Its white-noise level is at least GP_NOISE_FLOOR of the labels' variance: left free
# it fell to 0.004 (labels taken as exact), which over-trusts the data where the search looks hardest -- the nets
# that job specialized were predicted 1.6 points above their test accuracy; with the floor at 0.05 (label sd
# 0.33 points there, about the label noise of 2000 validation images) 1.1 points, tau 0.703.
# "ordinal+macs" (the ordinal columns and log MACs): on a clean-clone main job's 249 subnets (2026-12-03, 5000-image
# validation labels, 12 random 80/20 splits, `bench/predictor_gp_features.py`) held-out tau 0.791 against 0.778 on
# "ordinal", higher in 10 of the 12; log params as well changed nothing, a Matern kernel nothing, a linear kernel
# term lost 0.03.
GP_MAX_EVALS = 60
GP_NOISE_FLOOR = 0.05
DEFAULT_HP: dict[str, dict[str, Any]] = {
    "mlp": {"hidden": [128, 128, 128], "steps": 600, "lr": 3e-3, "weight_decay": 3e-2, "seed": 0,
            "features": "onehot"},
    "gbr": {"n_estimators": 800, "learning_rate": 0.03, "max_depth": 4, "subsample": 0.8, "seed": 0,
            "features": "onehot"},
    "gp": {"max_rows": 600, "seed": 0, "features": "ordinal+macs", "max_evals": GP_MAX_EVALS, "noise_floor": GP_NOISE_FLOOR},
    "ridge": {"alpha": 1.0, "features": "rich+onehot"},
}
# files written before `features` was a hyperparameter used these
_LEGACY_FEATURES = {"mlp": "onehot", "gbr": "rich+onehot", "gp": "rich", "ridge": "rich+onehot"}


# ------------------------------------------------------------------------------------------------
# the MLP (torch to train, numpy to predict)
def mlp_forward(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    """The MLP's output for each row of `x` (`layers`: (weight, bias) per linear layer, ReLU between them)."""
    h = x
    for i, (w, b) in enumerate(layers):
        h = h @ w.T + b
        if i < len(layers) - 1:
            np.maximum(h, 0.0, out=h)
    return h[:, 0]


def train_mlp(x: np.ndarray, y: np.ndarray, hp: dict[str, Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fit the MLP (`hp`: hidden, steps, lr, weight_decay, seed) to `y` by MSE; returns its (weight, bias) layers."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # matrices this small: more threads only wait on each other (600 steps on a busy
    try:                       # 2-core machine: 70 s with 2 threads, 5 s with 1)
        return _train_mlp_steps(x, y, hp)
    finally:
        torch.set_num_threads(threads)


def _train_mlp_steps(x: np.ndarray, y: np.ndarray, hp: dict[str, Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(int(hp["seed"]))
    dims = [x.shape[1], *hp["hidden"], 1]
    mods: list[nn.Module] = []
    for i in range(len(dims) - 1):
        lin = nn.Linear(dims[i], dims[i + 1])
        with torch.no_grad():  # seeded init independent of the global RNG
            bound = 1.0 / math.sqrt(dims[i])
            lin.weight.uniform_(-bound, bound, generator=gen)
            lin.bias.uniform_(-bound, bound, generator=gen)
        mods += [lin, nn.ReLU()]
    net = nn.Sequential(*mods[:-1])
    xt, yt = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.float32))
    opt = torch.optim.Adam(net.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    steps = int(hp["steps"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp["lr"], total_steps=steps, pct_start=0.1)
    batch = min(256, len(xt))
    for _ in range(steps):
        idx = torch.randint(0, len(xt), (batch,), generator=gen)
        loss = torch.mean((net(xt[idx]).squeeze(1) - yt[idx]) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    lins = [m for m in net if isinstance(m, nn.Linear)]
    return [(m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy()) for m in lins]


# ------------------------------------------------------------------------------------------------
# scikit-learn models
def make_sklearn_model(kind: str, hp: dict[str, Any], n_features: int):
    """An unfitted scikit-learn model of `kind` (gbr, ridge, gp; the GP with `hp["theta"]` fixed if given)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "gbr":
        from sklearn.ensemble import GradientBoostingRegressor

        return GradientBoostingRegressor(n_estimators=hp["n_estimators"], learning_rate=hp["learning_rate"],
                                         max_depth=hp["max_depth"], subsample=hp["subsample"], random_state=hp["seed"])
    if kind == "ridge":
        from sklearn.linear_model import Ridge

        return make_pipeline(StandardScaler(), Ridge(alpha=hp["alpha"]))
    if kind == "gp":
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

        theta = hp.get("theta")
        floor = float(hp.get("noise_floor", 1e-6))   # files written before the floor: sklearn's usual 1e-6
        kernel = (ConstantKernel(1.0, (1e-3, 1e3)) * RBF(np.full(n_features, 3.0), (1e-2, 1e3))
                  + WhiteKernel(max(0.1, floor), (floor, 1.0)))
        if theta is not None:  # refit with the stored optimized hyperparameters, no optimizer run
            kernel = kernel.clone_with_theta(np.asarray(theta, dtype=np.float64))
            return make_pipeline(StandardScaler(), GaussianProcessRegressor(kernel, optimizer=None, normalize_y=True))
        optimizer = partial(_lbfgs, max_evals=int(hp["max_evals"])) if hp.get("max_evals") else "fmin_l_bfgs_b"
        return make_pipeline(StandardScaler(), GaussianProcessRegressor(kernel, optimizer=optimizer, normalize_y=True,
                                                                        random_state=hp["seed"]))
    raise OFAError(f"unknown accuracy predictor kind '{kind}'; known kinds: {', '.join(KINDS)}")


def _lbfgs(objective, theta0, bounds, max_evals: int):
    """scikit-learn's GP optimizer (L-BFGS-B on the log marginal likelihood) with at most `max_evals` evaluations."""
    from scipy.optimize import minimize

    res = minimize(objective, theta0, method="L-BFGS-B", jac=True, bounds=bounds,
                   options={"maxiter": max_evals, "maxfun": max_evals})
    return res.x, res.fun


def gp_likelihood_seconds(n_rows: int, n_features: int, repeats: int = 3) -> float:
    """This machine's time for one evaluation of the GP's log marginal likelihood and its gradient (what each step
    of its hyperparameter search costs) on `n_rows` x `n_features` random data: the best of `repeats`."""
    import time

    from sklearn.gaussian_process import GaussianProcessRegressor

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((n_rows, n_features)), rng.standard_normal(n_rows)
    kernel = make_sklearn_model("gp", DEFAULT_HP["gp"], n_features)[-1].kernel   # the kernel the search tunes
    gp = GaussianProcessRegressor(kernel, optimizer=None, normalize_y=True).fit(x, y)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        gp.log_marginal_likelihood(gp.kernel_.theta, eval_gradient=True)
        best = min(best, time.perf_counter() - t0)
    return best


def feature_count(kind: str, space: SpaceSpec, params: dict[str, Any] | None = None) -> int:
    """Columns of the matrix a `kind` predictor (default hyperparameters unless `params`) is fit on in `space`."""
    params = DEFAULT_HP[kind] if params is None else params
    return int(kind_features(kind, space, [space.largest()], OneHotEncoding.for_space(space), params).shape[1])


def kind_features(kind: str, space: SpaceSpec, archs: Sequence[Arch], enc: OneHotEncoding,
                  params: dict[str, Any]) -> np.ndarray:
    """The matrix a `kind` predictor with hyperparameters `params` is fit on: its `features` set of the archs."""
    which = params.get("features", _LEGACY_FEATURES[kind])
    if which == "onehot":
        return enc.encode_arrays(arch_arrays(space, archs))
    if which == "ordinal":
        return ordinal_features(space, archs)
    if which == "ordinal+macs":
        return ordinal_macs_features(space, archs)
    rich = rich_features(space, archs)
    if which == "rich":
        return rich
    if which == "rich+onehot":
        return np.concatenate([rich, enc.encode_arrays(arch_arrays(space, archs))], axis=1)
    raise OFAError(f"unknown feature set '{which}' for a {kind} predictor; allowed: onehot, ordinal, ordinal+macs, "
                   "rich, rich+onehot")


__all__ = ["DEFAULT_HP", "GP_MAX_EVALS", "GP_NOISE_FLOOR", "KINDS", "feature_count", "gp_likelihood_seconds", "kind_features", "make_sklearn_model", "mlp_forward", "train_mlp"]
