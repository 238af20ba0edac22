"""ProxylessNAS backend: path-binarized architecture search with a differentiable expected-latency loss.

- `search_over_supernet(supernet, latency_predictor_or_table, budget_ms, batches, ...) -> (arch, info)`:
  architecture parameters over a trained once-for-all supernet (used by `ofa specialize --backend proxyless`);
- `OverParamNet` + `search_standalone(...)`: the original search from scratch on an over-parameterized net of
  MBConv k3/5/7 x e3/6 + zero candidates (used by `ofa proxyless-search`);
- `MixedOp` and the binary gates (`gates`), expected latency tables (`expected_latency`), losses (`loss`),
  saved-activation memory measurement (`saved_memory`).
"""
from specialize.proxyless.expected_latency import OpLatencyTable, SupernetLatencyTable
from specialize.proxyless.gates import MixedOp, arch_parameters, set_mode, weight_parameters
from specialize.proxyless.overparam import OverParamNet
from specialize.proxyless.standalone import StandaloneConfig, StandaloneResult, search_standalone
from specialize.proxyless.supernet_search import SupernetAlphas, SupernetSearchConfig, search_over_supernet

__all__ = [
    "MixedOp", "OpLatencyTable", "OverParamNet", "StandaloneConfig", "StandaloneResult", "SupernetAlphas",
    "SupernetLatencyTable", "SupernetSearchConfig", "arch_parameters", "search_over_supernet",
    "search_standalone", "set_mode", "weight_parameters",
]
