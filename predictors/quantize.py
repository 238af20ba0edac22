"""Static int8 post-training quantization of an exported network with ONNX Runtime's quantization tools.

The format is QDQ (QuantizeLinear / DequantizeLinear pairs around each quantized op; ONNX Runtime's CPU provider
fuses them into int8 kernels: QLinearConv, QGemm, QLinearAdd, QLinearMul), with int8 weights per output channel
and uint8 activations per tensor, calibrated by min / max over the calibration images. uint8 activations with
int8 weights is the pair x86 CPUs have int8 kernels for: with int8 activations this runtime left every depthwise
convolution in float (an mbv3-w1.0 subnet at 160 px ran 2.4x slower than with uint8).

On x86 CPUs without VNNI (AVX2 only, like this machine) the u8s8 kernels add pairs of products in 16 bits,
which saturate for full-range 8-bit weights; there weights are quantized to 7 bits (`reduce_range`): on a
digits-trained mbv3-w0.5-small net at 16 px it raised fp32/int8 argmax agreement on its 216 validation images from
91.2% to 96.3% (accuracy 83.8% -> 88.0%, fp32 86.6%) at no cost in speed. `reduce_range=None` decides by this CPU.

Before quantizing, the graph goes through ONNX Runtime's pre-processing (shape inference and its basic graph
optimizations, which split HardSwish into HardSigmoid and a Mul that then runs as QLinearMul). Without it the int8
subnets ran 1.4-1.8x slower than with it (mbv3-w1.0 at 128-224 px, one thread).

Parts of a `elastic.static_net.StaticNet` can stay in float (`float_parts`): `stem`, `block<N>` (the N-th mobile
block, counted from 0 as in the state-dict keys), `head` (final expand, pool, feature mix, classifier), `hswish`
(every h-swish activation) and `se` (every squeeze-excitation). They are found by the exporter's node names
(`/blocks/blocks.3/se/...`), which the pre-processing keeps; the nodes it creates unnamed (the inlined HardSwish)
are named here after the tensor they compute.
"""
from __future__ import annotations

import functools
import io
import logging
import re
import tempfile
import warnings
from collections import Counter
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from elastic.errors import OFAError

PRECISIONS = ("fp32", "int8")
PART_KINDS = ("stem", "block<N>", "head", "hswish", "se")
INT8_KERNELS = frozenset({"QLinearConv", "QGemm", "QLinearMatMul", "QLinearAdd", "QLinearMul", "ConvInteger",
                          "MatMulInteger", "QLinearGlobalAveragePool", "QLinearSigmoid", "QLinearLeakyRelu"})
# the graph optimization level at which the runtime fuses QDQ pairs into int8 kernels (the session default)
FUSING_LEVEL = "ORT_ENABLE_ALL"
_BLOCK = re.compile(r"^block(\d+)$")


@functools.lru_cache(maxsize=None)
def saturating_cpu() -> bool:
    """True on an x86 CPU without VNNI, whose u8s8 int8 kernels saturate 16-bit sums of products."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        return True
    return not any(f in flags.split() for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def check_precision(precision: str) -> str:
    p = str(precision)
    if p not in PRECISIONS:
        raise OFAError(f"unknown precision '{precision}'; allowed: {', '.join(PRECISIONS)}")
    return p


@contextmanager
def _quiet():
    """The quantization tools log and print advice on every call; keep the user's terminal clean."""
    old = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(old)


def _tools():
    try:
        import onnx  # noqa: F401
        from onnxruntime import quantization
    except ImportError as exc:
        raise OFAError(f"this onnxruntime has no quantization tools ({exc}); int8 needs onnxruntime >= 1.18 "
                       "with the onnx package (pip install onnx onnxruntime)") from None
    return quantization


def _session(model: bytes, threads: int = 1, optimized_to: Path | None = None, level: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if level is not None:
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    if optimized_to is not None:
        so.optimized_model_filepath = str(optimized_to)
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def kernel_ops(model: bytes, threads: int = 1) -> Counter:
    """Op types of the graph the CPU provider actually runs (after it fused the QDQ pairs), counted."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="ofa-int8-") as tmp, _quiet():
        out = Path(tmp) / "optimized.onnx"
        _session(model, threads, optimized_to=out, level=FUSING_LEVEL)
        return Counter(n.op_type for n in onnx.load(str(out)).graph.node)


def int8_coverage(model: bytes) -> dict:
    """How much of a quantized model runs in int8 kernels: counts of int8 kernels, of float compute ops left
    (convolutions, GEMMs, elementwise ops between Dequantize and Quantize) and of the Q/DQ conversions."""
    ops = kernel_ops(model)
    conv = {"QuantizeLinear", "DequantizeLinear", "Transpose", "Flatten", "Reshape", "Identity"}
    int8 = sum(v for k, v in ops.items() if k in INT8_KERNELS)
    floats = sum(v for k, v in ops.items() if k not in INT8_KERNELS and k not in conv)
    return {"int8_kernels": int8, "float_ops": floats,
            "conversions": ops.get("QuantizeLinear", 0) + ops.get("DequantizeLinear", 0), "ops": dict(ops)}


@functools.lru_cache(maxsize=None)
def _probe() -> tuple[str, ...]:
    """Quantize a one-convolution model and return the op types the runtime runs it with."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    q = _tools()
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with tempfile.TemporaryDirectory(prefix="ofa-int8-") as tmp, _quiet():
        src, dst = Path(tmp) / "probe.onnx", Path(tmp) / "probe.int8.onnx"
        onnx.save(model, str(src))
        q.quantize_static(str(src), str(dst), _Reader("x", [rng.standard_normal((1, 3, 8, 8)).astype(np.float32)]),
                          quant_format=q.QuantFormat.QDQ, per_channel=True, activation_type=q.QuantType.QUInt8,
                          weight_type=q.QuantType.QInt8)
        data = dst.read_bytes()
    return tuple(sorted(kernel_ops(data)))


def require_int8_runtime() -> None:
    """Fail (OFAError) unless this onnxruntime can quantize and runs int8 convolutions with int8 kernels."""
    import onnxruntime as ort

    ops = _probe()
    if not INT8_KERNELS.intersection(ops):
        raise OFAError(f"this onnxruntime ({ort.__version__}, CPU provider) has no int8 kernels: a quantized "
                       f"convolution ran as {', '.join(ops)}; int8 export and timing need a build with QLinearConv "
                       "(the standard onnxruntime wheel)")


class _Reader:
    """ONNX Runtime's calibration-data-reader protocol over a list of input batches."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray]):
        self.input_name, self.batches, self.i = input_name, list(batches), 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {self.input_name: np.ascontiguousarray(self.batches[self.i - 1], dtype=np.float32)}

    def rewind(self):
        self.i = 0


def _name_unnamed(model) -> None:
    """Give the nodes the pre-processing created unnamed (the inlined HardSwish: HardSigmoid + Mul) the scope of
    the tensor they compute, e.g. `/stem/HardSwish/Mul`, so that parts can be selected by name."""
    taken = {n.name for n in model.graph.node if n.name}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def unique(base: str) -> str:
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    pending = [n for n in model.graph.node if not n.name]
    for _ in range(3):  # a node named after its consumer may wait for that consumer's name
        left = []
        for n in pending:
            m = re.match(r"^(/.*)_output_\d+$", n.output[0]) if n.output else None
            named_consumer = next((c for c in consumers.get(n.output[0], []) if c.name), None) if n.output else None
            if m:
                n.name = unique(f"{m.group(1)}/{n.op_type}")
            elif named_consumer is not None:
                n.name = unique(f"{named_consumer.name.rsplit('/', 1)[0]}/{n.op_type}")
            else:
                left.append(n)
        pending = left
    for n in pending:
        n.name = unique(f"/unnamed/{n.op_type}")


def _scope(name: str) -> str:
    """The part a node belongs to: stem, block<N> or head."""
    m = re.match(r"^/blocks/blocks\.(\d+)/", name)
    if m:
        return f"block{int(m.group(1))}"
    if name.startswith("/stem/"):
        return "stem"
    return "head"


def part_names(model) -> list[str]:
    """The parts of a (pre-processed) StaticNet graph that can stay float, in network order."""
    seen: list[str] = []
    for n in model.graph.node:
        s = _scope(n.name)
        if s not in seen:
            seen.append(s)
    kinds = [k for k, pat in (("hswish", "/HardSwish"), ("se", "/se/")) if any(pat in n.name for n in model.graph.node)]
    return seen + kinds


def nodes_of_parts(model, parts: Iterable[str]) -> list[str]:
    """Names of the nodes making up `parts` (see the module docstring); an unknown part is an OFAError."""
    parts = list(dict.fromkeys(parts))
    known = part_names(model)
    bad = [p for p in parts if p not in known]
    if bad:
        raise OFAError(f"unknown float part '{bad[0]}'; this network has: {', '.join(known)}")
    out = []
    for n in model.graph.node:
        if any((p == "hswish" and "/HardSwish" in n.name) or (p == "se" and "/se/" in n.name) or p == _scope(n.name)
               for p in parts):
            out.append(n.name)
    return out


def prepare(model: bytes):
    """Pre-process an fp32 ONNX model for quantization (shape inference + basic optimizations), nodes all named."""
    import onnx

    _tools()
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="ofa-int8-") as tmp, _quiet():
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx"
        src.write_bytes(model)
        try:
            # ONNX's own shape inference suffices for these convolutional nets (the batch dimension stays symbolic);
            # the symbolic one costs 8x the time and changed no quantized node here
            quant_pre_process(str(src), str(dst), skip_optimization=False, skip_symbolic_shape=True)
            prepared = onnx.load(str(dst))
        except Exception as exc:  # a malformed model: the tools raise anything from onnx's checker to KeyError
            raise OFAError(f"ONNX Runtime could not prepare the model for quantization: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    _name_unnamed(prepared)
    return prepared


def quantize(model: bytes, calibration: Sequence[np.ndarray], float_parts: Sequence[str] = (),
             prepared=None, reduce_range: bool | None = None) -> bytes:
    """Int8 QDQ model (bytes) of the fp32 ONNX `model`, calibrated on `calibration` (input batches, NCHW float32,
    prepared as the net expects them), with `float_parts` left in float. Deterministic: the same model, batches
    and parts give the same bytes. `prepared` (from `prepare(model)`) saves re-preparing for several variants.
    `reduce_range`: 7-bit weights (None: where this CPU's int8 kernels saturate, see `saturating_cpu`)."""
    import onnx

    if len(calibration) == 0:
        raise OFAError("int8 calibration needs at least one input batch")
    require_int8_runtime()
    q = _tools()
    pre = prepared if prepared is not None else prepare(model)
    exclude = nodes_of_parts(pre, float_parts) if float_parts else []
    input_name = pre.graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="ofa-int8-") as tmp, _quiet():
        src, dst = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        onnx.save(pre, str(src))
        q.quantize_static(str(src), str(dst), _Reader(input_name, calibration), quant_format=q.QuantFormat.QDQ,
                          per_channel=True, activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                          calibrate_method=q.CalibrationMethod.MinMax, nodes_to_exclude=exclude,
                          reduce_range=saturating_cpu() if reduce_range is None else bool(reduce_range))
        return dst.read_bytes()


def quantize_for_timing(model: bytes, example: np.ndarray) -> bytes:
    """An int8 model for latency measurement only: calibrated on the one (random) example input, since the
    scales do not change which kernels run or how fast."""
    return quantize(model, [example])


__all__ = ["INT8_KERNELS", "PART_KINDS", "PRECISIONS", "check_precision", "int8_coverage", "kernel_ops",
           "nodes_of_parts", "part_names", "prepare", "quantize", "quantize_for_timing", "require_int8_runtime",
           "saturating_cpu"]
