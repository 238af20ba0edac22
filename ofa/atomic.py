"""Atomic file writes for the ofa/ layer: a re-export of `predictors.atomic_files`, their one home."""
from __future__ import annotations

import os  # noqa: F401  (tests patch `atomic.os` / `atomic.tempfile`, the same modules the home uses)
import tempfile  # noqa: F401

from predictors.atomic_files import (  # noqa: F401
    replace_dir,
    save_safetensors,
    staging_dir,
    torch_save,
    write_bytes,
    write_json,
    write_json_atomic,
    write_text,
)
