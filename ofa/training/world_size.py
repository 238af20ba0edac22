"""When a run saved with one number of processes may resume with another and stay exact.

A DDP step with W processes computes the mean gradient over the global batch, and the global batch of a step is
the same images for any W (the DistributedSampler deals one shuffled order round robin, the step's augmentation
is drawn for the whole global batch; see `ofa.data.augment_batch`). Two things make the result depend on W:
- BatchNorm in train mode normalizes each process's share of the batch with that share's statistics, so
  W changes what every image's activations are (`--bn-mode frozen` uses the running statistics instead);
- dropout draws its masks per process from a seed that includes the rank, so W changes the masks.
With frozen BN and no dropout every image's loss is independent of the others and of the rank: W processes
compute what one process does (up to the float rounding of the gradient all-reduce; tests/test_train_ddp.py).
Otherwise a resume with another W is refused with the reason, rather than silently becoming another run.
"""
from __future__ import annotations

from elastic.errors import OFAError


def world_dependence(cfg, space) -> list[str]:
    """Why a run's result depends on its number of processes (empty: it does not)."""
    why = []
    if cfg.bn_mode != "frozen":
        why.append("BatchNorm normalizes each process's share of the batch (train-mode BN; --bn-mode frozen would not)")
    dropout = cfg.dropout if cfg.dropout is not None else getattr(space, "dropout", 0.0)
    if dropout:
        why.append(f"dropout {dropout:g} draws its masks per process (--dropout 0 would not)")
    return why


def check_resume_world(saved: int | None, world: int, cfg, space) -> None:
    """Refuse a resume on `world` processes of a run saved on `saved` (None: an old run, not recorded) where that
    would change the result."""
    if saved is None or int(saved) == world:
        return
    why = world_dependence(cfg, space)
    if why:
        raise OFAError(f"run {cfg.run} was saved by {saved} process(es) and would resume on {world}, which changes "
                       f"its result: {'; '.join(why)}; resume with {saved} process(es) in all (torchrun --nnodes x "
                       f"--nproc_per_node)")


__all__ = ["check_resume_world", "world_dependence"]
