"""Progress of long work: a rich bar on a terminal, plain log lines everywhere else (CI, nohup, SLURM).

A bar redraws in place, which a log file cannot show: written to a file it is either nothing (rich draws only
on terminals) or a wall of control characters. So when the output is not a terminal, `Progress` prints one
plain line per task every `every_s` seconds (and every `every_steps` steps, when set), and when the task ends:

    [expand/2] step 120/472  loss 1.234  acc 67.3%  412 img/s  elapsed 1m05s  ETA 3m10s

`OFA_PROGRESS=bar|lines|off` overrides the choice (e.g. `lines` on a terminal to see what CI will print).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

MODES = ("bar", "lines", "off")


def format_duration(seconds: float) -> str:
    """`3725` -> `1h02m05s`, `65` -> `1m05s`, `7.2` -> `7s`."""
    s = max(0, int(round(seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _format_field(name: str, value: Any) -> str:
    if name == "acc" and isinstance(value, float):
        return f"acc {100 * value:.1f}%"
    if name == "ips" and isinstance(value, (int, float)):
        return f"{value:.0f} img/s"
    if isinstance(value, float):
        return f"{name} {value:.3f}"
    return f"{name} {value}"


@dataclass
class _Task:
    description: str
    total: int | None
    completed: int
    fields: dict[str, Any]
    started: float
    start_completed: int
    last_line: float
    last_line_step: int
    bar_id: Any = None
    done: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _is_terminal(console) -> bool:
    if console is not None:
        return bool(getattr(console, "is_terminal", False))
    return sys.stderr.isatty()


class Progress:
    """Tasks with a total and named fields (loss, acc, ips: rendered as shown above; anything else as `name value`).

    `mode`: "bar", "lines", "off", or None to choose (OFA_PROGRESS, else a bar on a terminal, lines otherwise).
    `console`: the rich console of the bar, also where lines go (default: stderr). `clock` is injectable for tests.
    """

    def __init__(self, enabled: bool = True, console=None, *, mode: str | None = None, every_s: float = 30.0,
                 every_steps: int | None = None, clock: Callable[[], float] = time.monotonic,
                 write: Callable[[str], None] | None = None):
        mode = mode or os.environ.get("OFA_PROGRESS") or ("bar" if _is_terminal(console) else "lines")
        if mode not in MODES:
            mode = "bar" if _is_terminal(console) else "lines"
        self.mode = mode if enabled else "off"
        self.console, self.every_s, self.every_steps, self.clock = console, every_s, every_steps, clock
        self._write = write
        self.bar = None
        self.tasks: list[_Task] = []

    # ---- context ---------------------------------------------------------------------------------------
    def __enter__(self) -> "Progress":
        if self.mode == "bar":
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("{task.fields[text]}"), TimeRemainingColumn(), console=self.console,
                                    transient=False)
            self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for t in self.tasks:
            if not t.done and self.mode == "lines" and t.completed > t.last_line_step and exc[0] is None:
                self._line(t)
        if self.bar is not None:
            self.bar.__exit__(*exc)
            self.bar = None

    # ---- tasks -----------------------------------------------------------------------------------------
    def task(self, description: str, total: int | None, completed: int = 0, **fields: Any) -> _Task | None:
        if self.mode == "off":
            return None
        now = self.clock()
        t = _Task(description, total, completed, dict(fields), now, completed, now, completed)
        if self.bar is not None:
            t.bar_id = self.bar.add_task(description, total=total, completed=completed, text=self._text(t))
        self.tasks.append(t)
        return t

    def update(self, task: _Task | None, advance: int = 1, completed: int | None = None, **fields: Any) -> None:
        if task is None:
            return
        task.completed = completed if completed is not None else task.completed + advance
        task.fields.update(fields)
        if self.bar is not None:
            self.bar.update(task.bar_id, completed=task.completed, text=self._text(task))
            return
        now = self.clock()
        finished = task.total is not None and task.completed >= task.total
        due = now - task.last_line >= self.every_s or (
            self.every_steps is not None and task.completed - task.last_line_step >= self.every_steps)
        if finished or due:
            self._line(task, now)
            task.done = finished

    # ---- rendering -------------------------------------------------------------------------------------
    def _text(self, t: _Task) -> str:
        return "  ".join(_format_field(k, v) for k, v in t.fields.items() if v is not None)

    def line_for(self, t: _Task, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        elapsed = now - t.started
        head = f"[{t.description}] step {t.completed}" + (f"/{t.total}" if t.total is not None else "")
        parts = [head]
        text = self._text(t)
        if text:
            parts.append(text)
        parts.append(f"elapsed {format_duration(elapsed)}")
        done_here = t.completed - t.start_completed
        if t.total is not None and 0 < done_here and t.completed < t.total:
            parts.append(f"ETA {format_duration(elapsed / done_here * (t.total - t.completed))}")
        return "  ".join(parts)

    def _line(self, t: _Task, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        text = self.line_for(t, now)
        t.last_line, t.last_line_step = now, t.completed
        if self._write is not None:
            self._write(text)
        elif self.console is not None:
            self.console.print(text, highlight=False, markup=False, soft_wrap=True)
        else:
            print(text, file=sys.stderr, flush=True)


def callback(progress: Progress, description: str, **fields: Any) -> Callable[[int, int], None]:
    """A `(done, total)` callback (as `predictors.measure` takes) driving one task of `progress`."""
    state: dict[str, Any] = {}

    def report(done: int, total: int) -> None:
        if "task" not in state:
            state["task"] = progress.task(description, total, 0, **fields)
        progress.update(state["task"], completed=done)

    return report


__all__ = ["MODES", "Progress", "callback", "format_duration"]
