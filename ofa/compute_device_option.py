"""`--compute-device`: where a command runs its networks (train, fit-predictor, specialize, proxyless-search).

`--device` names a latency profile in `specialize`, `latency` and `proxyless-search` (`--device pixel1`); the
compute device is `--compute-device` everywhere. `train` and `fit-predictor` took the compute device as `--device`
before: that spelling still works there for one release, with a one-line note on stderr.
"""
from __future__ import annotations

import sys

from elastic.errors import OFAError
from ofa.training.distributed import parse_compute_device

HELP = "Where the networks run: auto (a GPU when there is one) | cpu | cuda | cuda:N."
DEPRECATED_HELP = "Deprecated spelling of --compute-device (kept for one release)."


def compute_device_from_options(compute_device: str | None, deprecated_device: str | None, command: str) -> str:
    """The compute device from `--compute-device` and the deprecated `--device` of `ofa <command>`."""
    if deprecated_device is not None:
        print(f"note: `ofa {command} --device` is deprecated, write --compute-device {deprecated_device} (--device "
              f"will name a latency profile, as in specialize)", file=sys.stderr)
        if compute_device is not None and parse_compute_device(compute_device) != parse_compute_device(deprecated_device):
            raise OFAError(f"--compute-device {compute_device} and the deprecated --device {deprecated_device} disagree; "
                           f"give only --compute-device")
        compute_device = compute_device or deprecated_device
    return parse_compute_device(compute_device)


__all__ = ["DEPRECATED_HELP", "HELP", "compute_device_from_options"]
