"""Atomic file writes: the bytes land in a temp file in the target's directory, are fsync'ed, then
`os.replace`d over the target, so a reader (or a resumed run after SIGKILL) sees the old file or the new
one, never a torn one.

The one home of atomic writes: `ofa.atomic` re-exports this module for the ofa/ layer.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from elastic.errors import OFAError


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (temp file in the same directory + fsync + os.replace)."""
    path = Path(path)
    try:
        return _write_bytes(path, data)
    except OSError as exc:  # disk full, read-only or missing directory: the old file (if any) is untouched
        raise OFAError(f"could not write {path}: {exc.strerror or exc}; the previous file (if any) is unchanged") from exc


def _write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    return write_text(path, json.dumps(obj, indent=indent) + "\n")


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """JSON with `indent=1` and no trailing newline (the profile and bench-results format), written atomically."""
    return write_text(path, json.dumps(data, indent=1))


def save_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Serialize a flat name -> tensor dict with safetensors and write it atomically."""
    from safetensors.torch import save

    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return write_bytes(path, save(flat, metadata=metadata))


def torch_save(path: str | Path, obj: Any) -> Path:
    """`torch.save` into memory, then write atomically (objects must be tensors/plain types so that
    `torch.load(weights_only=True)` can read them back)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_bytes(path, buf.getvalue())


def staging_dir(target: str | Path) -> Path:
    """A new hidden folder beside `target` (`.NAME.tmp-PID-*`, usual permissions) to build it in."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
    return tmp


def replace_dir(tmp: str | Path, target: str | Path) -> None:
    """Rename the finished folder `tmp` onto `target`; an existing `target` is first moved aside (to
    `.NAME.old-PID-*`, put back if the second rename fails) and deleted once the new one is in place."""
    import shutil
    import time

    tmp, target = Path(tmp), Path(target)
    if not target.exists():
        os.replace(tmp, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.time_ns()}")
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
