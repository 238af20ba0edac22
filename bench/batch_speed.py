"""Speed of the batched paths, measured side by side (the speed claims the tests no longer make).

    python3 bench/batch_speed.py            # -> bench/results/batch_speed.json

Each figure is a ratio of two timings taken in the same run (this machine's speed swings from day to day), with the
absolute times beside it for the record:
- MACs / params of 10,000 archs in one batched call against one call per arch (timed on 300, scaled);
- latency predictors (note10, pixel1, flops) on 10,000 archs, batched against one call per arch (300, scaled);
- extracting the largest subnet of `mbv3-w1.0` from the supernet against building the same static net fresh;
- an arch-only search with OFA's published predictor (note10, 25 ms; the full default evolution), seconds.
Best of `--repeats` for every timing, one torch thread.
"""
from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from elastic.complexity import macs, params  # noqa: E402
from elastic.spaces import get_space  # noqa: E402
from ofa import atomic  # noqa: E402


def best(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return min(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(0)
    rows = {}

    space = get_space("mbv3-w1.2")
    archs = [space.sample(rng) for _ in range(10_000)]
    few = archs[:300]
    macs(space, archs[:2])
    batched = best(lambda: (macs(space, archs), params(space, archs)), args.repeats)
    single = best(lambda: [(macs(space, [a]), params(space, [a])) for a in few], args.repeats) * len(archs) / len(few)
    rows["macs_params_10k"] = {"batched_s": batched, "one_by_one_s": single, "speedup": single / batched}

    from predictors.latency import get_latency_predictor

    for device, name in (("note10", "mbv3-w1.2"), ("pixel1", "mbv3-w1.0"), ("flops", "mbv3-w1.0-small")):
        sp = get_space(name)
        pool = [sp.sample(rng) for _ in range(10_000)]
        pred = get_latency_predictor(device, sp)
        pred.predict(pool[:2])
        batched = best(lambda: pred.predict(pool), args.repeats)
        single = best(lambda: [pred.predict([a]) for a in pool[:300]], args.repeats) * len(pool) / 300
        rows[f"latency_{device}_{name}_10k"] = {"batched_s": batched, "one_by_one_s": single,
                                                "speedup": single / batched}

    from elastic.static_net import StaticNet
    from elastic.supernet import Supernet

    sp = get_space("mbv3-w1.0")
    net = Supernet(sp)
    arch = sp.largest()
    net.extract(arch)
    extract = best(lambda: net.extract(arch), args.repeats)
    fresh = best(lambda: StaticNet(sp.net_spec(arch)), args.repeats)
    rows["extract_largest_mbv3-w1.0"] = {"extract_s": extract, "fresh_static_net_s": fresh,
                                         "extract_over_fresh": extract / fresh}

    import ofa
    from predictors.ofa_predictor import SHIPPED

    search = best(lambda: ofa.specialize(device="note10", latency="25ms", space="mbv3-w1.2",
                                         accuracy_predictor=SHIPPED), max(1, args.repeats // 2))
    rows["arch_only_search_note10_25ms_s"] = search

    for k, v in rows.items():
        print(f"{k:40s} {v}")
    out = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
           "torch_threads": 1, "repeats": args.repeats, "date": time.strftime("%Y-%m-%d"), "results": rows}
    dest = ROOT / "bench" / "results" / "batch_speed.json"
    atomic.write_json(dest, out)
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
