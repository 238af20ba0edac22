"""Collect an accuracy dataset from a trained run: measured (arch, accuracy) pairs to fit a predictor on.

`collect_accuracy_dataset(run, n)` samples `n` distinct subnets, stratified over resolution (round robin) and size
(small / uniform / large-biased draws in turn), BN-recalibrates each on training images at its resolution,
evaluates it on the validation split, and appends one row per subnet to `<run>/predictors/acc_dataset.csv`
as it goes (each row written with one `write` + fsync).

Resumable: the sample plan is a deterministic function of (space, seed), and any longer plan starts with any
shorter one, so a stopped collection continues with the next unmeasured subnet, and asking for more samples
later extends the same dataset. Rows are matched by their canonical arch: nothing is measured twice. A torn last
line (the process killed mid-write) is dropped on the next start by rewriting the file atomically. Settings that
change what an accuracy means (split, calibration images, evaluation limit, data config, space) are kept in
`acc_dataset.json`; resuming with different ones is a clear error rather than a silently mixed dataset.
"""
from __future__ import annotations

import csv
import io
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from elastic.arch import Arch
from elastic.errors import OFAError
from elastic.spaces import SpaceSpec
from ofa import atomic

COLUMNS = ("index", "arch", "resolution", "depth", "macs", "params", "accuracy", "seconds")
SIZE_GAMMAS = (2.5, 1.0, 0.4)   # small-biased, uniform, large-biased draws (strata), in turn


@dataclass
class AccuracyDataset:
    archs: list[Arch]
    accuracies: list[float]
    rows: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.archs)


def dataset_paths(run_path: str | os.PathLike) -> tuple[Path, Path]:
    d = Path(run_path) / "predictors"
    return d / "acc_dataset.csv", d / "acc_dataset.json"


# ---- the plan -------------------------------------------------------------------------------------
def _draw(space: SpaceSpec, rng: random.Random, r: int, gamma: float) -> Arch:
    def pick(choices: Sequence[int]) -> int:
        ch = sorted(choices)
        return ch[min(len(ch) - 1, int(len(ch) * rng.random() ** gamma))]

    return Arch(ks=tuple(pick(space.ks_choices) for _ in range(space.n_blocks)),
                e=tuple(pick(space.e_choices) for _ in range(space.n_blocks)),
                d=tuple(pick(space.depth_choices(s)) for s in range(space.n_stages)), r=r)


def plan_subnets(space: SpaceSpec, n: int, seed: int = 0) -> list[Arch]:
    """`n` distinct (canonical) subnets; plan(n) is a prefix of plan(m) for m > n. Largest and smallest first."""
    rng = random.Random(seed)
    out: list[Arch] = []
    seen: set[Arch] = set()
    for a in (space.largest(), space.smallest()):
        if len(out) < n and a not in seen:
            out.append(a)
            seen.add(a)
    i, tries = 0, 0
    while len(out) < n:
        r = space.resolutions[i % len(space.resolutions)]
        gamma = SIZE_GAMMAS[(i // len(space.resolutions)) % len(SIZE_GAMMAS)]
        a = space.canonical(_draw(space, rng, r, gamma))
        tries += 1
        if a in seen:
            if tries > 50 * n + 1000:
                raise OFAError(f"space {space.name} has fewer than {n} distinct subnets to sample")
            continue
        seen.add(a)
        out.append(a)
        i += 1
    return out


# ---- the CSV --------------------------------------------------------------------------------------
def read_dataset(csv_path: str | os.PathLike, space: SpaceSpec | None = None, repair: bool = False) -> AccuracyDataset:
    """Rows of an accuracy CSV. A torn final line is ignored (and with `repair` removed from the file);
    any other bad row is an OFAError naming the line."""
    path = Path(csv_path)
    if not path.exists():
        return AccuracyDataset([], [], [])
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    lines = text.split("\n")
    torn = not text.endswith("\n") and lines[-1] != ""
    body = lines[:-1]                       # complete lines only (the last element is "" or the torn tail)
    if not body:
        if repair:
            atomic.write_text(path, "")
        return AccuracyDataset([], [], [])
    reader = csv.DictReader(io.StringIO("\n".join(body) + "\n"))
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise OFAError(f"{path} is not an accuracy dataset (header {reader.fieldnames}, expected {list(COLUMNS)})")
    archs, accs, rows = [], [], []
    for lineno, row in enumerate(reader, start=2):
        try:
            arch = Arch.from_json(row["arch"])
            if space is not None:
                space.validate(arch)
            acc = float(row["accuracy"])
            if not 0.0 <= acc <= 1.0:
                raise ValueError(f"accuracy {acc} outside [0, 1]")
        except (OFAError, ValueError, TypeError, KeyError) as exc:
            raise OFAError(f"{path} line {lineno} is damaged ({exc}); fix or delete that line and resume") from None
        archs.append(arch)
        accs.append(acc)
        rows.append(row)
    if torn and repair:
        atomic.write_text(path, "\n".join(body) + "\n")
    return AccuracyDataset(archs, accs, rows)


def _append_row(path: Path, row: dict[str, Any]) -> None:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([row[c] for c in COLUMNS])
    data = buf.getvalue().encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)              # one write of one short line
        os.fsync(fd)
    finally:
        os.close(fd)


def _header() -> str:
    return ",".join(COLUMNS) + "\n"


# ---- shards of a collection over several processes ------------------------------------------------
def shard_path(csv_path: str | os.PathLike, rank: int) -> Path:
    """Where process `rank` of a multi-process collection appends its rows (merged into the CSV at the end)."""
    p = Path(csv_path)
    return p.with_name(f"{p.stem}.rank{rank}{p.suffix}")


def merge_shards(csv_path: str | os.PathLike, space: SpaceSpec | None = None) -> int:
    """Fold every shard file beside `csv_path` into it, rows in plan order (the `index` column, as one process
    writes them), each subnet once; then remove the shards. Returns the rows added. A shard's torn last line (its
    process killed mid-write) is left out. Safe to repeat: the CSV is rewritten atomically before any shard goes."""
    csv_path = Path(csv_path)
    shards = sorted(csv_path.parent.glob(f"{csv_path.stem}.rank*{csv_path.suffix}"))
    if not shards:
        return 0
    main = read_dataset(csv_path, space, repair=True)
    rows = {a: r for a, r in zip(_canonical(main.archs, space), main.rows)}
    before = len(rows)
    for shard in shards:
        part = read_dataset(shard, space)
        for a, r in zip(_canonical(part.archs, space), part.rows):
            rows.setdefault(a, r)
    if len(rows) > before:
        _write_in_plan_order(csv_path, list(rows.values()))
    for shard in shards:
        shard.unlink(missing_ok=True)
    return len(rows) - before


def _write_in_plan_order(csv_path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for r in sorted(rows, key=lambda r: int(r["index"])):
        writer.writerow([r[c] for c in COLUMNS])
    atomic.write_text(csv_path, _header() + buf.getvalue())


def _canonical(archs: Sequence[Arch], space: SpaceSpec | None) -> list[Arch]:
    return [space.canonical(a) for a in archs] if space is not None else list(archs)


# ---- collection -----------------------------------------------------------------------------------
def _prepare(space: SpaceSpec, csv_path: Path, meta: dict[str, Any], resume: bool) -> None:
    """One process's checks before a collection: leftover shards merged, settings compared, header written."""
    meta_path = csv_path.with_suffix(".json")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    merge_shards(csv_path, space)
    existing = read_dataset(csv_path, space, repair=True)
    if len(existing) and not resume:
        raise OFAError(f"{csv_path} already holds {len(existing)} measured subnets; pass --resume to continue "
                       f"(and extend) it, or delete it to start over")
    if meta_path.exists():
        try:
            old = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = None
        if len(existing) and old != meta:
            diff = sorted(k for k in set(meta) | set(old or {}) if (old or {}).get(k) != meta.get(k))
            raise OFAError(f"{csv_path} was collected with different settings ({', '.join(diff)}); resume with the "
                           f"same settings or delete it to start over")
    atomic.write_json(meta_path, meta)
    if not csv_path.exists() or csv_path.stat().st_size == 0:
        atomic.write_text(csv_path, _header())


def collect(space: SpaceSpec, csv_path: str | os.PathLike, n: int, evaluate: Callable[[Arch], float], *,
            settings: dict[str, Any] | None = None, seed: int = 0, resume: bool = False,
            progress: bool = True, channel=None) -> AccuracyDataset:
    """Measure the first `n` subnets of the plan that the CSV does not hold yet, appending as it goes.

    `evaluate(arch) -> accuracy in [0, 1]`. Without `resume`, an existing non-empty dataset is an error.
    `channel` (an `ofa.training.distributed.ObjectChannel`, several processes): the unmeasured subnets are dealt
    round robin over the ranks, each appends its rows to its own shard file (`shard_path`), and when all are done
    rank 0 merges the shards into the CSV, which then equals a one-process collection's (but for `seconds`). Each
    subnet's accuracy depends on the subnet alone, so any number of processes, and a resume on any other number
    after a kill of any of them, give the same dataset. Every rank returns the merged dataset.
    """
    if n < 1:
        raise OFAError(f"number of samples must be >= 1, got {n}")
    csv_path = Path(csv_path)
    rank, world = (channel.info.rank, channel.info.world) if channel is not None else (0, 1)
    meta = {"space": space.to_dict(), "seed": seed, **(settings or {})}
    error = None
    if rank == 0:
        try:
            _prepare(space, csv_path, meta, resume)
        except OFAError as exc:
            if channel is None:
                raise
            error = str(exc)
    if channel is not None:
        channel.raise_first_error(error)   # also the barrier: nobody reads the CSV before rank 0 has merged it

    existing = read_dataset(csv_path, space)
    done = set(_canonical(existing.archs, space))
    todo = [(i, a) for i, a in enumerate(plan_subnets(space, n, seed)) if a not in done]
    mine = todo[rank::world]
    target = csv_path if world == 1 else shard_path(csv_path, rank)
    if world > 1:
        atomic.write_text(target, _header())
    archs, accs, rows = list(existing.archs), list(existing.accuracies), list(existing.rows)
    if mine:
        from elastic.netspec import net_macs, net_params
        from ofa.progress import Progress

        what = "measuring subnets" if world == 1 else f"measuring subnets (rank 0's share of {len(todo)}, {world} ranks)"
        with Progress(progress and rank == 0) as bar:
            total, left = (n, len(todo)) if world == 1 else (len(mine), len(mine))
            task = bar.task(what, total, total - left)
            for i, arch in mine:
                t = time.perf_counter()
                acc = float(evaluate(arch))
                if not 0.0 <= acc <= 1.0:
                    raise OFAError(f"the evaluate function returned accuracy {acc} for subnet {i}; accuracies are "
                                   "fractions in [0, 1] (not percentages)")
                spec = space.net_spec(arch)
                row = {"index": i, "arch": arch.to_json(), "resolution": arch.r, "depth": sum(arch.d),
                       "macs": net_macs(spec), "params": net_params(spec), "accuracy": f"{acc:.6f}",
                       "seconds": f"{time.perf_counter() - t:.3f}"}
                _append_row(target, row)
                archs.append(arch)
                accs.append(round(acc, 6))
                rows.append(row)
                bar.update(task, last=f"{100 * acc:.2f}% ({arch.summary()[:24]})")
    if world == 1:
        if mine and existing.rows and min(i for i, _ in mine) < max(int(r["index"]) for r in existing.rows):
            # gaps left by an interrupted multi-process collection were filled: back to plan order
            _write_in_plan_order(csv_path, read_dataset(csv_path, space).rows)
            return read_dataset(csv_path, space)
        return AccuracyDataset(archs, accs, rows)
    channel.wait()                   # the slowest rank may take long: a wait of up to LONG_WAIT
    if rank == 0:
        merge_shards(csv_path, space)
    channel.wait()
    return read_dataset(csv_path, space)


def collect_from_run(run_path: str | os.PathLike, n: int, *, seed: int = 0, resume: bool = False,
                     calib_images: int = 2000, split: str = "val", limit: int | None = None,
                     device: str | None = None, threads: int | None = None, progress: bool = True) -> AccuracyDataset:
    """`collect` with the run's supernet, data and space: BN-recalibrated, evaluated on the validation split.

    `device`: the compute device (auto, cpu, cuda, cuda:N). Under torchrun the subnets are shared out over the
    processes, each on its own device (`cuda`: the GPU of its LOCAL_RANK), and rank 0 merges their rows."""
    import torch

    from ofa.run_dir import RunDir
    from ofa.training.distributed import ObjectChannel, init_distributed
    from ofa.training.evaluate import evaluate_arch

    run = RunDir(run_path)
    space = run.load_space()
    if threads is not None:
        if threads < 1:
            raise OFAError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    info = init_distributed(device)
    dev = info.device
    csv_path, _ = dataset_paths(run.path)
    settings = {"data": run.data_config(), "split": split, "calib_images": calib_images, "limit": limit}
    state: dict[str, Any] = {}

    def evaluate(arch: Arch) -> float:
        if "net" not in state:   # load lazily: a complete dataset needs no supernet
            state["net"] = run.load_supernet().to(dev)
            state["data"] = run.load_data()
            state["calib"] = {}
        return evaluate_arch(state["net"], arch, state["data"], split, calib_images, dev, limit, state["calib"])

    channel = ObjectChannel(info) if info.distributed else None
    return collect(space, csv_path, n, evaluate, settings=settings, seed=seed, resume=resume, progress=progress,
                   channel=channel)


__all__ = ["AccuracyDataset", "COLUMNS", "collect", "collect_from_run", "dataset_paths", "merge_shards", "plan_subnets",
           "read_dataset", "shard_path"]
