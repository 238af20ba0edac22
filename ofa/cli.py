"""The `ofa` command line: thin typer commands that parse, call the public API and render.

Each command lives in `ofa/commands/<name>.py` and registers itself on `app`. `main()` turns every
user-caused failure (an `OFAError`, or a usage error from bad options) into one line on stderr and exit 2.
"""
from __future__ import annotations

import os
import sys

import typer

try:  # typer >= 0.20 vendors click; older versions use the click package
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover
    from click import exceptions as click_exceptions

from elastic.errors import OFAError

app = typer.Typer(
    name="ofa", help="Train one once-for-all supernet; specialize it for any device without retraining.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)


def _flags_show_no_value() -> None:
    """typer's rich help prints `<bool>` in the value column of flags (--json, --help), which take no value:
    show nothing there, as its plain help does."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    TyperOption.display_type_rich = lambda self, ctx: None if self.is_flag else shown(self, ctx)


_flags_show_no_value()


@app.callback()
def _root() -> None:
    """Train one once-for-all supernet; specialize it for any device without retraining."""


def _register_commands() -> None:
    import importlib
    import pkgutil

    import ofa.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"ofa.commands.{info.name}")


def _one_line(msg: str) -> str:
    """User-typed values may hold newlines or control characters: escape them so the error stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in msg)


def _leave_process_group(status: object) -> None:
    """A process that joined a torchrun process group (train, finetune, ...) destroys it and exits at once with
    `status`, skipping the interpreter's shutdown. Left to that shutdown, a gloo worker thread could still be
    releasing a finished collective's tensors: it then needs the GIL of an interpreter being torn down, and the
    process aborted ('terminate called without an active exception', exit -6) after all its work was done (1
    run in 8 of tests/test_train_ddp.py on a 2-core machine; core dump: ProcessGroupGloo::AsyncWork's destructor
    in take_gil). Without a process group this does nothing, and imports nothing a command did not."""
    dist = _joined_process_group()
    if dist is None:
        return
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status if isinstance(status, int) else (0 if status is None else 1))


def _joined_process_group():
    """torch.distributed when this process joined a process group, else None."""
    dist = sys.modules.get("torch.distributed")
    return dist if dist is not None and dist.is_available() and dist.is_initialized() else None


def main(argv: list[str] | None = None) -> None:
    _register_commands()
    try:
        _run(argv)
    except SystemExit as exc:
        _leave_process_group(exc.code)
        raise
    except BaseException:
        if _joined_process_group() is not None:   # the traceback first: the exit skips Python's own printing
            import traceback

            traceback.print_exc()
            _leave_process_group(1)
        raise
    _leave_process_group(0)


def _run(argv: list[str] | None) -> None:
    try:
        app(args=argv, standalone_mode=False)
    except OFAError as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        sys.exit(2)
    except click_exceptions.NoArgsIsHelpError:
        sys.exit(0)
    except click_exceptions.UsageError as exc:
        where = f" (ofa {exc.ctx.info_name})" if exc.ctx is not None and exc.ctx.info_name != "ofa" else ""
        print(f"error{where}: {_one_line(exc.format_message())}", file=sys.stderr)
        sys.exit(2)
    except click_exceptions.ClickException as exc:
        print(f"error: {_one_line(exc.format_message())}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:  # (typer's vendored click has no Abort)
        print("error: aborted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
