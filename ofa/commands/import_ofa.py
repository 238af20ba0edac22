"""`ofa import-ofa`: a supernet or specialized network published with the original Once-for-All code."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ofa.cli import app


@app.command("import-ofa")
def import_ofa_cmd(
    checkpoint: Path = typer.Argument(..., help="The original checkpoint (a dict with 'state_dict' or a bare state "
                                      "dict), or a published net's folder (net.config + init)."),
    space: Optional[str] = typer.Option(None, "--space", help="Space of the supernet (mbv3-w1.0, mbv3-w1.2, "
                                        "proxyless-w1.3); default: recognised from the shapes."),
    run: Optional[Path] = typer.Option(None, "--run", "--run-dir", help="Run directory to write (a supernet; "
                                       "default checkpoints/<checkpoint name>)."),
    net_config: Optional[Path] = typer.Option(None, "--net-config", help="A specialized network's net.config: "
                                              "import CHECKPOINT as that static network into --out."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for a specialized network (with --net-config)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=8, help="Input resolution of a specialized "
                                             "network (default: its config's image_size, run.config beside it, or "
                                             "224)."),
    data: Optional[str] = typer.Option(None, "--data", help="imagefolder:PATH (train/ + val/): recorded as the "
                                       "run's data; evaluates a specialized network."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0,
                                          help="Image decoding processes (default: cores - 1)."),
    export: Optional[str] = typer.Option(None, "--export", help="Also export a specialized network: onnx, torchscript."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory / folder."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Import published Once-for-All weights: a supernet as a run directory, a specialized net as a folder."""
    from elastic.errors import OFAError
    from ofa.export import parse_exports
    from ofa.ofa_import import import_net, import_supernet

    exports = parse_exports(export)
    static = net_config is not None or checkpoint.is_dir()
    if static:
        if run is not None or space is not None:
            raise OFAError("--run/--space are for supernets; a specialized network (--net-config) goes to --out DIR")
        if out is None:
            raise OFAError("give --out DIR: the folder the specialized network is written to")
        result = import_net(checkpoint, out, net_config=net_config, image_size=image_size, data=data,
                            exports=exports, overwrite=overwrite, workers=workers, progress=not as_json)
    else:
        if out is not None or image_size is not None or exports:
            raise OFAError("--out/--image-size/--export are for specialized networks (--net-config); a supernet "
                           "goes to --run DIR (then `ofa extract` or `ofa specialize` it)")
        run = run if run is not None else Path("checkpoints") / checkpoint.name.split(".")[0]
        result = import_supernet(checkpoint, run, space=space, data=data, overwrite=overwrite, workers=workers,
                                 progress=not as_json)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    what = f"supernet {result.space}" if result.kind == "supernet" else "specialized network"
    print(f"imported {what} ({result.n_classes} classes) from {result.provenance.get('source')} -> {result.path}")
    if result.test_accuracy is not None:
        print(f"test accuracy {100 * result.test_accuracy:.2f}%")
    for note in result.notes:
        print(f"note: {note}")
