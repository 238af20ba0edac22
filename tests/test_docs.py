"""docs/cli.md says what the `ofa` app accepts: it is the generator's output for the app as it is now."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_cli", DOCS / "gen_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_the_generators_output():
    gen = _generator()
    assert (DOCS / "cli.md").read_text(encoding="utf-8") == gen.render(), \
        "docs/cli.md is out of date: run python3 docs/gen_cli.py"


def test_cli_reference_lists_every_command_and_option():
    """The generator walks the whole app: every registered command and each of its options appears."""
    gen = _generator()
    text = gen.render()
    root = gen._root_command()
    ctx = gen._context(root, "ofa")
    for path, cmd, _ in gen._walk(root, "ofa", ctx):
        assert f"## `{path}`" in text
        section = text.split(f"## `{path}`", 1)[1].split("\n## ", 1)[0]
        for param in cmd.params:
            if not getattr(param, "hidden", False):
                assert gen._flags(param).split(", ")[0] in section, (path, param.opts)
