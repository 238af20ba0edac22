"""A training run directory (e.g. `checkpoints/<run>/`) and everything stored in it.

    space.json               the space the supernet belongs to (`SpaceSpec.to_dict`)
    data.json                the data config (`ofa.data.get_data(**config)` rebuilds the same splits)
    supernet.safetensors     the latest supernet weights
    stages/<stage>.safetensors   the weights at the end of each stage (`kernel` starts from `full`, KD loads it)
    stages/<stage>.eval.json     accuracy of the largest / smallest / random subnets at the end of the stage
    train_state.pt           resumable state: optimizer, scheduler, RNG states, stage, phase, epoch, step
                             (tensors and plain types only; read with torch.load(weights_only=True))
    history.jsonl            one JSON line per epoch (and one per stage-end evaluation)

Every write is atomic (`ofa.atomic`); every read validates and turns bad files into one-line `OFAError`s.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from elastic.errors import OFAError
from elastic.spaces import SpaceSpec, space_from_dict
from ofa import atomic

WEIGHTS_FORMAT = "ofa-supernet/1"
STAGE_NAMES = ("full", "kernel", "depth", "expand")


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()

    # ---- paths ---------------------------------------------------------------------------------
    space_file = property(lambda self: self.path / "space.json")
    data_file = property(lambda self: self.path / "data.json")
    weights_file = property(lambda self: self.path / "supernet.safetensors")
    state_file = property(lambda self: self.path / "train_state.pt")
    history_file = property(lambda self: self.path / "history.jsonl")

    def stage_weights_file(self, stage: str) -> Path:
        return self.path / "stages" / f"{stage}.safetensors"

    def stage_eval_file(self, stage: str) -> Path:
        return self.path / "stages" / f"{stage}.eval.json"

    def exists(self) -> bool:
        return self.space_file.exists()

    def trained_stages(self) -> list[str]:
        return [s for s in STAGE_NAMES if self.stage_weights_file(s).exists()]

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def check_creatable(self) -> None:
        """Fail before any work when the run directory cannot exist (it, or the nearest existing folder above it,
        is a file)."""
        for here in (self.path, *self.path.parents):
            if here.exists():
                if not here.is_dir():
                    raise OFAError(f"cannot use run directory {self.path}: {here} is a file, not a directory; "
                                   "give --run a directory path")
                return

    def create(self) -> None:
        """Make the run directory (and the folders above it); an OS refusal is a one-line OFAError."""
        self.check_creatable()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OFAError(f"cannot create run directory {self.path}: {exc.strerror or exc}; "
                           "give --run a directory you can write") from None

    # ---- space and data --------------------------------------------------------------------------
    def save_space(self, space: SpaceSpec) -> None:
        atomic.write_json(self.space_file, space.to_dict())

    def load_space(self) -> SpaceSpec:
        if not self.space_file.exists():
            raise OFAError(f"{self.path} is not a run directory (no space.json); train one with `ofa train --run {self.path}`")
        return space_from_dict(self._read_json(self.space_file))

    def save_data_config(self, config: dict[str, Any]) -> None:
        atomic.write_json(self.data_file, config)

    def data_config(self) -> dict[str, Any]:
        """The data config this run was trained with; `ofa.data.get_data(**cfg)` rebuilds the same splits."""
        if not self.data_file.exists():
            raise OFAError(f"run directory {self.path} has no data.json (was it created by `ofa train`?)")
        cfg = self._read_json(self.data_file)
        if not isinstance(cfg, dict) or "name" not in cfg:
            raise OFAError(f"{self.data_file} must be a JSON object with at least a 'name' field")
        return cfg

    def load_data(self, uncapped: bool = False):
        """The run's data; `uncapped`: without its `eval_size` cap on val and test (the capped images come first)."""
        from ofa.data import data_from_config

        cfg = self.data_config()
        return data_from_config({**cfg, "eval_size": None} if uncapped else cfg)

    # ---- weights -----------------------------------------------------------------------------------
    def save_weights(self, model: torch.nn.Module, space: SpaceSpec, stage: str | None = None,
                     also_latest: bool = True) -> None:
        meta = {"format": WEIGHTS_FORMAT, "space": space.name, "n_classes": str(space.n_classes),
                "stage": stage or ""}
        state = model.state_dict()
        if stage is not None:
            atomic.save_safetensors(self.stage_weights_file(stage), state, meta)
        if also_latest:
            atomic.save_safetensors(self.weights_file, state, meta)

    def load_state_dict(self, stage: str | None = None, space: SpaceSpec | None = None) -> dict[str, torch.Tensor]:
        """The weights (latest or of `stage`), checked to be a readable safetensors file of this run's space."""
        path = self.weights_file if stage is None else self.stage_weights_file(stage)
        if not path.exists():
            what = "supernet weights" if stage is None else f"'{stage}' stage checkpoint"
            raise OFAError(f"{path} not found: run directory {self.path} has no {what}")
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                state = {k: fh.get_tensor(k) for k in fh.keys()}
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise OFAError(f"{path} is not a readable safetensors checkpoint ({exc}); re-train or restore the file") from None
        if meta.get("format") != WEIGHTS_FORMAT:
            raise OFAError(f"{path} is not an ofa supernet checkpoint (format {meta.get('format')!r}, expected {WEIGHTS_FORMAT!r})")
        space = space or self.load_space()
        if meta.get("space") != space.name or meta.get("n_classes") != str(space.n_classes):
            raise OFAError(f"{path} holds weights of space {meta.get('space')!r} with {meta.get('n_classes')} classes, "
                           f"but space.json says {space.name!r} with {space.n_classes} classes")
        return state

    def load_into(self, model: torch.nn.Module, stage: str | None = None, space: SpaceSpec | None = None) -> None:
        """Load checkpoint weights into `model`, failing clearly on missing/unexpected keys or shape mismatches."""
        state = self.load_state_dict(stage, space)
        check_state_dict(model, state, str(self.weights_file if stage is None else self.stage_weights_file(stage)))
        model.load_state_dict(state, strict=True)

    def load_supernet(self, stage: str | None = None):
        """A `Supernet` of this run's space with the latest (or `stage`'s) weights, in eval mode."""
        from elastic.supernet import Supernet

        space = self.load_space()
        net = Supernet(space)
        self.load_into(net, stage, space)
        return net.eval()

    # ---- resumable state ---------------------------------------------------------------------------
    def save_train_state(self, state: dict[str, Any]) -> None:
        atomic.torch_save(self.state_file, state)

    def load_train_state(self) -> dict[str, Any] | None:
        if not self.state_file.exists():
            return None
        try:
            state = torch.load(self.state_file, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OFAError(f"{self.state_file} is not a readable training state ({first}); "
                           "delete it to restart the stage") from None
        if not isinstance(state, dict) or "stage" not in state or "config" not in state:
            raise OFAError(f"{self.state_file} is not an ofa training state (expected a dict with stage and config)")
        return state

    # ---- history and evaluations --------------------------------------------------------------------
    def history(self) -> list[dict[str, Any]]:
        if not self.history_file.exists():
            return []
        out = []
        for i, line in enumerate(self.history_file.read_text().splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    raise OFAError(f"{self.history_file} line {i} is not valid JSON") from None
        return out

    def append_history(self, record: dict[str, Any]) -> None:
        """Add one record; a record with the same (kind, stage, phase, epoch) replaces the old one, so an epoch
        redone after a resume is written once."""
        key = lambda r: (r.get("kind"), r.get("stage"), r.get("phase"), r.get("epoch"))  # noqa: E731
        rows = [r for r in self.history() if key(r) != key(record)] + [record]
        atomic.write_text(self.history_file, "".join(json.dumps(r) + "\n" for r in rows))

    def save_stage_eval(self, stage: str, result: dict[str, Any]) -> None:
        atomic.write_json(self.stage_eval_file(stage), result)

    def stage_eval(self, stage: str) -> dict[str, Any]:
        return self._read_json(self.stage_eval_file(stage))

    # ---- helpers ----------------------------------------------------------------------------------
    @staticmethod
    def _read_json(path: Path) -> Any:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise OFAError(f"{path} not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise OFAError(f"{path} is not valid JSON ({exc})") from None


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise OFAError(f"{where} lacks {len(missing)} weight(s) of this supernet (e.g. {missing[0]}); "
                       "it belongs to another space or is damaged")
    if unexpected:
        raise OFAError(f"{where} has {len(unexpected)} weight(s) this supernet does not (e.g. {unexpected[0]}); "
                       "it belongs to another space")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise OFAError(f"{where}: weight {k} has shape {tuple(state[k].shape)}, this supernet needs {tuple(v.shape)}")
