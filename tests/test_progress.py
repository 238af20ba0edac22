"""ofa.progress: plain lines every N seconds / steps when the output is not a terminal (the clock is injected)."""
from __future__ import annotations

import io

from rich.console import Console

from ofa.progress import Progress, callback, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_durations_read_as_hours_minutes_seconds():
    assert [format_duration(s) for s in (0, 7.4, 65, 3725, -3)] == ["0s", "7s", "1m05s", "1h02m05s", "0s"]


def test_lines_every_30_seconds_with_phase_step_loss_accuracy_rate_and_eta():
    clock, lines = FakeClock(), []
    with Progress(mode="lines", clock=clock, write=lines.append) as p:
        task = p.task("expand/2 ep 1/1", 100, 0)
        for step in range(1, 101):
            clock.t += 1.0          # a step a second: a line at 30, 60, 90 s and at the end
            p.update(task, loss=1.2345, acc=0.6734, ips=128.0)
    assert len(lines) == 4
    assert lines[0] == ("[expand/2 ep 1/1] step 30/100  loss 1.234  acc 67.3%  128 img/s  elapsed 30s  ETA 1m10s")
    assert lines[-1].startswith("[expand/2 ep 1/1] step 100/100") and "ETA" not in lines[-1]


def test_every_n_steps_and_a_resumed_task_estimates_from_its_own_steps():
    clock, lines = FakeClock(), []
    with Progress(mode="lines", every_s=1e9, every_steps=25, clock=clock, write=lines.append) as p:
        task = p.task("kernel", 100, completed=50)     # resumed half way: the ETA counts only the steps done now
        for _ in range(25):
            clock.t += 2.0
            p.update(task)
    assert lines == ["[kernel] step 75/100  elapsed 50s  ETA 50s"]


def test_an_unfinished_task_gets_its_last_line_at_exit_and_off_prints_nothing():
    clock, lines = FakeClock(), []
    with Progress(mode="lines", clock=clock, write=lines.append) as p:
        task = p.task("measuring subnets", 10)
        clock.t += 3
        p.update(task, last="88.10% (r24 ...)")
    assert lines == ["[measuring subnets] step 1/10  last 88.10% (r24 ...)  elapsed 3s  ETA 27s"]
    quiet: list[str] = []
    with Progress(False, mode="lines", write=quiet.append) as p:
        t = p.task("x", 3)
        p.update(t)
        assert t is None
    assert quiet == []


def test_the_output_decides_bar_or_lines(monkeypatch):
    monkeypatch.delenv("OFA_PROGRESS", raising=False)
    file_console = Console(file=io.StringIO(), force_terminal=False)
    assert Progress(console=file_console).mode == "lines"
    assert Progress(console=Console(file=io.StringIO(), force_terminal=True)).mode == "bar"
    monkeypatch.setenv("OFA_PROGRESS", "lines")
    assert Progress(console=Console(file=io.StringIO(), force_terminal=True)).mode == "lines"


def test_lines_go_to_the_console_and_a_callback_drives_a_task():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    clock = FakeClock()
    with Progress(console=console, clock=clock) as p:
        report = callback(p, "cpu profile")
        for i in range(1, 7):
            clock.t += 10
            report(i, 6)
    text = out.getvalue().splitlines()
    # the task starts with the first report (step 1, at 10 s): a line 30 s later and one at the end
    assert text == ["[cpu profile] step 4/6  elapsed 30s  ETA 15s", "[cpu profile] step 6/6  elapsed 50s"]
