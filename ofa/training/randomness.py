"""Seeds and RNG states of the trainers (`ofa.training.loop`, `ofa.training.finetune`).

`derive_seed` turns a tuple of plain values (seed, stage, phase, epoch, step, what for) into a seed, so every
random choice of a step can be drawn afresh from where it is in the run rather than from a running generator;
`rng_state` / `set_rng_state` save and restore the global generators (Python, NumPy, torch, CUDA) in a form
`torch.load(weights_only=True)` reads back, for checkpoints.
"""
from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import torch


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from a tuple of plain values (stable across processes and Python runs)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


# ---- RNG states in weights_only-loadable form --------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    py = random.getstate()
    npst = np.random.get_state()
    out = {"python": [py[0], list(py[1]), py[2]], "numpy": [npst[0], torch.from_numpy(npst[1].astype(np.int64)),
                                                              int(npst[2]), int(npst[3]), float(npst[4])],
           "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():   # one state per GPU of this process
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")   # restored where the same GPUs are there (every step reseeds them anyway)
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


__all__ = ["derive_seed", "rng_state", "set_rng_state"]
