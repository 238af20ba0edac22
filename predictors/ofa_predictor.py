"""OFA's published accuracy predictor for the OFA-MobileNetV3 w1.2 space on ImageNet, as an `AccuracyPredictor`.

The weights come from Once-for-All (Han Cai, Chuang Gan, Tianzhe Wang, Zhekai Zhang, Song Han, "Once-for-All:
Train One Network and Specialize it for Efficient Deployment", ICLR 2020; code under the MIT License). They are
shipped inside this package, converted to safetensors, as `predictors/data/ofa_mbv3_w1.2_imagenet_acc.safetensors`
(see the `.md` file next to it for the attribution and license). The model: an MLP 128 -> 400 -> 400 -> 400 -> 1
with ReLUs on OFA's one-hot encoding (`OneHotEncoding.ofa_imagenet`), output = top-1 accuracy as a fraction.

`load_ofa_predictor()` uses the shipped file; `load_ofa_predictor(path)` also accepts the original `.pth` state dict
(read with `torch.load(weights_only=True)`) or a converted `.safetensors`. Any other file is a clear OFAError.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from elastic.errors import OFAError
from elastic.spaces import get_space
from predictors.accuracy import AccuracyPredictor
from predictors.atomic_files import write_bytes
from predictors.domain import Domain
from predictors.encoding import OneHotEncoding

DATA_DIR = Path(__file__).resolve().parent / "data"
SHIPPED = DATA_DIR / "ofa_mbv3_w1.2_imagenet_acc.safetensors"
SPACE_NAME = "mbv3-w1.2"
SHAPES = {"0.weight": (400, 128), "0.bias": (400,), "2.weight": (400, 400), "2.bias": (400,),
          "4.weight": (400, 400), "4.bias": (400,), "6.weight": (1, 400), "6.bias": (1,)}
# OFA trained it on subnets at 160-224 px only: the one-hot slots of 128 and 144 px never saw data
DOMAIN = Domain("OFA's accuracy predictor", ("mbv3",), (160, 176, 192, 208, 224), False, (SPACE_NAME,),
                "trained by OFA on ImageNet subnets at 160-224 px")
ATTRIBUTION = ("Accuracy predictor from Once-for-All (Han Cai, Chuang Gan, Tianzhe Wang, Zhekai Zhang, Song Han, "
               "ICLR 2020), MIT License, Copyright (c) 2020 MIT Han Lab; converted to safetensors unchanged.")


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise OFAError(f"accuracy predictor file {path} does not exist; give OFA's mbv3-w1.2 predictor (.pth or .safetensors)")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise OFAError(f"{path} is not a readable safetensors file ({exc}); expected OFA's mbv3-w1.2 accuracy predictor") from None
    import pickle

    import torch

    try:
        sd = torch.load(str(path), weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise OFAError(f"{path} is not a loadable PyTorch state dict ({first}); expected OFA's mbv3-w1.2 accuracy predictor") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise OFAError(f"{path} does not hold a state dict of tensors; expected OFA's mbv3-w1.2 accuracy predictor")
    return {k: v.detach().float().cpu().numpy() for k, v in sd.items()}


def _check(tensors: dict[str, np.ndarray], path: Path) -> None:
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if got != SHAPES:
        missing = sorted(set(SHAPES) - set(got))
        wrong = sorted(k for k in SHAPES if k in got and got[k] != SHAPES[k])
        detail = f"missing {missing}" if missing else (f"wrong shapes for {wrong}" if wrong else f"unexpected keys {sorted(set(got) - set(SHAPES))}")
        raise OFAError(f"{path} is not OFA's mbv3-w1.2 accuracy predictor (MLP 128-400-400-400-1): {detail}")


def load_ofa_predictor(path: str | os.PathLike | None = None) -> AccuracyPredictor:
    """OFA's published ImageNet accuracy predictor for `mbv3-w1.2` (1000 classes), batched `.predict(archs)`."""
    p = SHIPPED if path is None else Path(path)
    tensors = _read_tensors(p)
    _check(tensors, p)
    layers = [(tensors[f"{i}.weight"].astype(np.float32), tensors[f"{i}.bias"].astype(np.float32)) for i in (0, 2, 4, 6)]
    space = get_space(SPACE_NAME, n_classes=1000)
    return AccuracyPredictor(
        "mlp", space, OneHotEncoding.ofa_imagenet(), {"hidden": [400, 400, 400]}, layers=layers,
        report={"source": "Once-for-All published predictor (ImageNet, mbv3-w1.2)", "attribution": ATTRIBUTION},
        meta={"origin": str(p.name), "attribution": ATTRIBUTION, "domain": DOMAIN.to_dict()},
    )


def convert_ofa_predictor(pth: str | os.PathLike, out: str | os.PathLike = SHIPPED) -> Path:
    """Convert OFA's `.pth` state dict to the shipped safetensors file (keys and values unchanged)."""
    from safetensors.numpy import save

    src = Path(pth)
    tensors = _read_tensors(src)
    _check(tensors, src)
    data = save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
                metadata={"source": "Once-for-All mbv3-w1.2_imagenet_acc_predictor.pth", "license": "MIT",
                        "attribution": ATTRIBUTION, "encoding": "OFA one-hot: 60 kernel, 60 expand, 8 resolution ((r-112)//16)"})
    return write_bytes(out, data)


if __name__ == "__main__":  # python -m predictors.ofa_predictor ORIGINAL.pth  (maintainers: regenerate the shipped file)
    import sys

    print(convert_ofa_predictor(sys.argv[1]))
