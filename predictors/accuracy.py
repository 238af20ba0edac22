"""Accuracy predictors: arch -> predicted top-1 accuracy (a fraction), batched.

Four kinds, one class (`AccuracyPredictor`): `mlp` (OFA's MLP on the one-hot encoding), `gbr` (gradient boosting),
`gp` (a Gaussian process) and `ridge`; `predictors.accuracy_models` holds the models themselves, the features each
kind is fit on and the default hyperparameters.
`fit_accuracy_predictor` holds out part of the data, picks the kind by K-fold cross-validation on the rest
(mean Kendall tau across folds, RMSE breaks ties), reports RMSE / Kendall tau / top-k hit rate of the chosen kind
on the held-out part (`predictors.metrics`), then refits it on all rows for the returned predictor.

Files (`save(dir)` / `load(dir)`), never pickle:
- `accuracy_predictor.json`: kind, space, encoding, hyperparameters, report, and for the scikit-learn kinds the
  exact feature matrix and targets they were fit on plus the fitted hyperparameters (the GP's optimized kernel).
  Loading refits the scikit-learn model deterministically from those (fixed seeds; the GP with its optimizer off,
  so it only solves one linear system) and checks the refit against predictions stored at save time. We chose
  this over serializing estimator internals: the file stays small, readable JSON and survives scikit-learn
  upgrades; a refit takes well under a second at the dataset sizes involved (hundreds to a few thousand rows).
- `accuracy_predictor.safetensors`: the MLP's weights (mlp kind only).
- `accuracy_report.json`: the quality report alone, for people and other tools.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from elastic.arch import Arch
from elastic.errors import OFAError
from elastic.spaces import SpaceSpec, space_from_dict
from predictors.accuracy_models import DEFAULT_HP, KINDS, kind_features, make_sklearn_model, mlp_forward, train_mlp
from predictors.atomic_files import write_bytes
from predictors.domain import fit_domain_record, predictor_domain
from predictors.encoding import OneHotEncoding
from predictors.metrics import accuracy_quality, kendall_tau

FORMAT = "ofa-accuracy-predictor"
JSON_NAME = "accuracy_predictor.json"
WEIGHTS_NAME = "accuracy_predictor.safetensors"
REPORT_NAME = "accuracy_report.json"


# ------------------------------------------------------------------------------------------------
class AccuracyPredictor:
    """Predicts top-1 accuracy (fraction) for batches of archs of one space. Build with `fit` or `load`."""

    def __init__(self, kind: str, space: SpaceSpec, encoding: OneHotEncoding, hp: dict[str, Any],
                 *, layers: list[tuple[np.ndarray, np.ndarray]] | None = None, y_mean: float = 0.0,
                 y_std: float = 1.0, model: Any = None, train_x: np.ndarray | None = None,
                 train_y: np.ndarray | None = None, report: dict[str, Any] | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        if kind not in KINDS:
            raise OFAError(f"unknown accuracy predictor kind '{kind}'; known kinds: {', '.join(KINDS)}")
        self.kind, self.space, self.encoding, self.hp = kind, space, encoding, dict(hp)
        self.layers, self.y_mean, self.y_std, self.model = layers, float(y_mean), float(y_std), model
        self.train_x, self.train_y = train_x, train_y
        self.report: dict[str, Any] = dict(report or {})
        self.meta: dict[str, Any] = dict(meta or {})

    # ---- fitting -----------------------------------------------------------------------------
    @classmethod
    def fit(cls, space: SpaceSpec, archs: Sequence[Arch], accs: Sequence[float], kind: str = "gbr",
            **hp: Any) -> "AccuracyPredictor":
        if kind not in KINDS:
            raise OFAError(f"unknown accuracy predictor kind '{kind}'; known kinds: {', '.join(KINDS)}")
        archs, y = list(archs), np.asarray(accs, dtype=np.float64)
        if len(archs) != len(y) or len(archs) < 4:
            raise OFAError(f"need at least 4 (arch, accuracy) pairs of equal count to fit a predictor, got {len(archs)} archs and {len(y)} accuracies")
        params = {**DEFAULT_HP[kind], **hp}
        enc = OneHotEncoding.for_space(space)
        x = kind_features(kind, space, archs, enc, params)
        pred = cls._fit_xy(kind, space, enc, params, x, y)
        pred.meta["domain"] = fit_domain_record(space, archs)   # what it was fit on (predictors.domain)
        return pred

    @classmethod
    def _fit_xy(cls, kind: str, space: SpaceSpec, enc: OneHotEncoding, params: dict[str, Any], x: np.ndarray,
                y: np.ndarray) -> "AccuracyPredictor":
        if kind == "mlp":
            mean, std = float(y.mean()), float(y.std() or 1.0)
            layers = train_mlp(x, (y - mean) / std, params)
            return cls(kind, space, enc, params, layers=layers, y_mean=mean, y_std=std)
        if kind == "gp" and len(y) > params["max_rows"]:  # exact GP is cubic in rows: fit on a seeded subset
            keep = np.random.default_rng(params["seed"]).choice(len(y), params["max_rows"], replace=False)
            x, y = x[np.sort(keep)], y[np.sort(keep)]
        model = make_sklearn_model(kind, params, x.shape[1])
        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # GP optimizer chatter; any other warning shows
            model.fit(x, y)
        if kind == "gp" and "theta" not in params:
            params = {**params, "theta": model[-1].kernel_.theta.tolist()}
        return cls(kind, space, enc, params, model=model, train_x=x, train_y=y)

    # ---- prediction --------------------------------------------------------------------------
    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        archs = list(archs)
        if not archs:
            return np.zeros(0)
        x = kind_features(self.kind, self.space, archs, self.encoding, self.hp)
        return self.predict_features(x)

    def predict_features(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "mlp":
            return mlp_forward(self.layers, x.astype(np.float32)).astype(np.float64) * self.y_std + self.y_mean
        return np.asarray(self.model.predict(x), dtype=np.float64)

    @property
    def domain(self):
        """The `predictors.domain.Domain` it was fit on (space, family, the resolutions of its data)."""
        return predictor_domain(self)

    def predict_one(self, arch: Arch) -> float:
        return float(self.predict([arch])[0])

    # ---- persistence -------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        doc: dict[str, Any] = {
            "format": FORMAT, "version": 1, "kind": self.kind, "space": self.space.to_dict(),
            "encoding": self.encoding.to_dict(), "hyperparameters": self.hp, "report": self.report, "meta": self.meta,
        }
        if self.kind == "mlp":
            from safetensors.numpy import save

            tensors = {}
            for i, (w, b) in enumerate(self.layers):
                tensors[f"layers.{i}.weight"], tensors[f"layers.{i}.bias"] = w, b
            doc["target"] = {"mean": self.y_mean, "std": self.y_std}
            write_bytes(d / WEIGHTS_NAME, save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
                                                 metadata={"format": FORMAT, "kind": "mlp"}))
        else:
            doc["train"] = {"x": self.train_x.tolist(), "y": self.train_y.tolist()}
            probe = self.train_x[: min(16, len(self.train_x))]
            doc["check"] = {"rows": len(probe), "pred": self.predict_features(probe).tolist()}
        write_bytes(d / JSON_NAME, json.dumps(doc).encode())
        write_bytes(d / REPORT_NAME, json.dumps(self.report, indent=2).encode())
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "AccuracyPredictor":
        d = Path(directory)
        path = d / JSON_NAME if d.is_dir() else d
        if not path.is_file():
            raise OFAError(f"no accuracy predictor at {directory}: expected {JSON_NAME} (written by `ofa fit-predictor`)")
        try:
            doc = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise OFAError(f"{path} is not a valid accuracy predictor file: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("kind") not in KINDS:
            raise OFAError(f"{path} is not an accuracy predictor file (expected format '{FORMAT}' and a kind in {list(KINDS)})")
        try:
            space = space_from_dict(doc["space"])
            enc = OneHotEncoding.from_dict(doc["encoding"])
            kind, hp = doc["kind"], dict(doc["hyperparameters"])
            if kind == "mlp":
                from safetensors import SafetensorError
                from safetensors.numpy import load_file

                wpath = path.parent / WEIGHTS_NAME
                try:
                    t = load_file(str(wpath))
                except (FileNotFoundError, SafetensorError, OSError) as exc:
                    raise OFAError(f"cannot read MLP weights {wpath}: {exc}") from None
                n = len(hp["hidden"]) + 1
                layers = [(t[f"layers.{i}.weight"], t[f"layers.{i}.bias"]) for i in range(n)]
                pred = cls(kind, space, enc, hp, layers=layers, y_mean=doc["target"]["mean"],
                           y_std=doc["target"]["std"], report=doc.get("report"), meta=doc.get("meta"))
                if layers[0][0].shape[1] != enc.n_features:
                    raise OFAError(f"MLP weights in {wpath} expect {layers[0][0].shape[1]} inputs, the encoding gives {enc.n_features}")
                return pred
            x = np.asarray(doc["train"]["x"], dtype=np.float64)
            y = np.asarray(doc["train"]["y"], dtype=np.float64)
            if not (np.isfinite(x).all() and np.isfinite(y).all()):
                raise ValueError("its training rows hold values that are not finite numbers")
            pred = cls._fit_xy(kind, space, enc, hp, x, y)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            detail = " ".join(str(exc).split())   # one line, whatever the library's message looked like
            raise OFAError(f"{path} is a damaged accuracy predictor file ({type(exc).__name__}: {detail})") from None
        report, meta, check = doc.get("report") or {}, doc.get("meta") or {}, doc.get("check")
        if not isinstance(report, dict) or not isinstance(meta, dict) or not (check is None or isinstance(check, dict)):
            raise OFAError(f"{path} is a damaged accuracy predictor file (report, meta and check must be JSON objects)")
        pred.report, pred.meta = dict(report), dict(meta)
        if check:
            try:
                rows = check["rows"]
                if not isinstance(rows, int) or isinstance(rows, bool) or not 0 < rows <= len(x):
                    raise ValueError(f"check rows {rows!r} not in 1..{len(x)}")
                want = np.asarray(check["pred"], dtype=np.float64)
                again = pred.predict_features(x[:rows])
                if want.shape != again.shape:
                    raise ValueError(f"{want.size} saved predictions for {rows} rows")
            except (KeyError, TypeError, ValueError) as exc:
                raise OFAError(f"{path} is a damaged accuracy predictor file ({type(exc).__name__}: {exc})") from None
            if not np.allclose(again, want, atol=1e-6):
                warnings.warn(f"refit of {kind} predictor from {path} differs from the saved predictions by up to "
                              f"{np.abs(again - want).max():.2e} (different scikit-learn version?)", stacklevel=2)
        return pred

    def __repr__(self) -> str:
        tau = self.report.get("holdout", {}).get("kendall_tau")
        return f"AccuracyPredictor(kind={self.kind!r}, space={self.space.name!r}" + (f", holdout_tau={tau:.3f})" if tau is not None else ")")


# ------------------------------------------------------------------------------------------------
def check_dataset_size(n: int, folds: int, holdout: float) -> None:
    """OFAError when `n` measured subnets are too few for `folds`-fold CV plus a `holdout` fraction."""
    n_hold = int(round(holdout * n))
    need_train, need_hold = max(2 * folds, 8), (3 if holdout > 0 else 0)
    if n - n_hold < need_train or n_hold < need_hold:
        least = max(need_train + need_hold, int(math.ceil(need_hold / holdout)) if holdout > 0 else 0,
                    int(math.ceil(need_train / (1 - holdout))))
        raise OFAError(f"{n} measured subnets are too few to fit and check an accuracy predictor; collect at least "
                       f"{least} (e.g. `ofa fit-predictor --samples 200`)")


def holdout_split(n: int, holdout: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(held-out rows, fitting rows), each sorted: the seeded split `fit_accuracy_predictor` reports on."""
    perm = np.random.default_rng(seed).permutation(n)
    n_hold = int(round(holdout * n))
    return np.sort(perm[:n_hold]), np.sort(perm[n_hold:])


def fit_accuracy_predictor(space: SpaceSpec, archs: Sequence[Arch], accs: Sequence[float],
                           kinds: Sequence[str] = KINDS, folds: int = 5, holdout: float = 0.2, seed: int = 0,
                           progress: Any = None, hp: dict[str, dict[str, Any]] | None = None) -> AccuracyPredictor:
    """Hold out `holdout` of the rows, choose a kind by `folds`-fold CV on the rest, report held-out quality,
    return the chosen kind refit on all rows (its `.report` has the CV table and the held-out metrics).
    `hp` overrides hyperparameters per kind, e.g. {"mlp": {"steps": 200}}."""
    from sklearn.model_selection import KFold

    archs, y = list(archs), np.asarray(accs, dtype=np.float64)
    for k in kinds:
        if k not in KINDS:
            raise OFAError(f"unknown accuracy predictor kind '{k}'; known kinds: {', '.join(KINDS)}")
    n = len(archs)
    if n != len(y):
        raise OFAError(f"got {n} archs but {len(y)} accuracies")
    check_dataset_size(n, folds, holdout)
    params = {k: {**DEFAULT_HP[k], **((hp or {}).get(k) or {})} for k in kinds}
    hold_idx, train_idx = holdout_split(n, holdout, seed)
    n_hold = len(hold_idx)
    enc = OneHotEncoding.for_space(space)
    feats = {k: kind_features(k, space, archs, enc, params[k]) for k in kinds}   # once per kind, sliced per fold

    cv: dict[str, dict[str, float]] = {}
    kf = KFold(n_splits=folds, shuffle=True, random_state=seed)
    for kind in kinds:
        x = feats[kind][train_idx]
        yt = y[train_idx]
        pred = np.zeros(len(yt))
        taus = []
        for tr, te in kf.split(x):
            m = AccuracyPredictor._fit_xy(kind, space, enc, dict(params[kind]), x[tr], yt[tr])
            pred[te] = m.predict_features(x[te])
            taus.append(kendall_tau(yt[te], pred[te]))
            if progress is not None:
                progress(kind)
        cv[kind] = {"rmse": float(np.sqrt(np.mean((pred - yt) ** 2))), "kendall_tau": float(np.mean(taus))}
    chosen = max(kinds, key=lambda k: (round(cv[k]["kendall_tau"], 3), -cv[k]["rmse"]))

    report: dict[str, Any] = {"chosen": chosen, "n_rows": n, "n_train": int(len(train_idx)), "n_holdout": int(n_hold),
                              "folds": folds, "seed": seed, "cv": cv}
    if n_hold:
        m = AccuracyPredictor._fit_xy(chosen, space, enc, dict(params[chosen]), feats[chosen][train_idx], y[train_idx])
        report["holdout"] = accuracy_quality(y[hold_idx], m.predict_features(feats[chosen][hold_idx]))
    final = AccuracyPredictor._fit_xy(chosen, space, enc, dict(params[chosen]), feats[chosen], y)
    report["final_fit"] = "all rows (held-out metrics come from the same kind fit without the held-out rows)"
    final.report = report
    final.meta["domain"] = fit_domain_record(space, archs)   # what it was fit on (predictors.domain)
    return final


def format_report(report: dict[str, Any]) -> str:
    lines = [f"accuracy predictor: {report.get('chosen')} ({report.get('n_rows')} subnets, "
             f"{report.get('folds')}-fold CV on {report.get('n_train')}, {report.get('n_holdout')} held out)"]
    for k, v in report.get("cv", {}).items():
        mark = "*" if k == report.get("chosen") else " "
        lines.append(f" {mark} {k:<6} CV rmse {100 * v['rmse']:.3f} pts  CV kendall tau {v['kendall_tau']:.3f}")
    h = report.get("holdout")
    if h:
        lines.append(f"   held out: rmse {100 * h['rmse']:.3f} pts, kendall tau {h['kendall_tau']:.3f}, "
                     f"top-{h['topk_k']} hit rate {h['topk_hit_rate']:.2f}")
    return "\n".join(lines)
