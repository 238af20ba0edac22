"""Training memory as the bytes of the tensors autograd keeps for backward (deterministic, any device).

The activation memory of a training step is what the forward pass saves for the backward pass; weights,
gradients and optimizer state are the same for every way of mixing candidates of one over-parameterized net.
`saved_tensor_bytes(fn)` runs `fn` under `torch.autograd.graph.saved_tensors_hooks` and sums the bytes of every
distinct storage a saved tensor lives in (each storage counted once, however many views of it were saved; the
storages are kept alive until the count is done, so freed memory cannot be reused and counted twice), leaving out
the model's own parameters when they are passed as `exclude`. This is exactly the activation memory the graph pins
until backward, free of allocator noise, and gives the same number on every run.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch


def saved_tensor_bytes(fn: Callable[[], Any], exclude: Iterable[torch.Tensor] = ()) -> tuple[int, Any]:
    """(bytes of distinct storages saved for backward while `fn` runs, fn's result).

    `exclude`: tensors whose storages are not counted (pass the model's parameters to count activations only:
    a saved weight, or a slice of one, is memory the model holds anyway)."""
    storages: dict[int, int] = {}
    keep: list[torch.Tensor] = []
    skip = {t.untyped_storage().data_ptr() for t in exclude}

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in storages and ptr not in skip:
            storages[ptr] = st.nbytes()
            keep.append(t)
        return t

    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        result = fn()
    total = sum(storages.values())
    keep.clear()
    return total, result


__all__ = ["saved_tensor_bytes"]
