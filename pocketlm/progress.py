"""Progress reporting for long work (pulls, benchmarks), decoupled from any UI.

Services report through a ``Progress``; the CLI passes a ``RichProgress`` that
draws bars with rate and ETA on stderr (stdout stays for results), and prints a
line per step when stderr is not a terminal.
"""

from __future__ import annotations

import sys
from typing import Protocol


class Task(Protocol):
    def advance(self, n: int) -> None: ...
    def update(self, completed: int, total: int | None = None) -> None: ...
    def describe(self, description: str) -> None: ...


class Progress(Protocol):
    def task(self, description: str, total: int | None, unit: str = "bytes") -> Task: ...
    def note(self, message: str) -> None: ...
    def close(self) -> None: ...


class _NullTask:
    def advance(self, n: int) -> None:
        pass

    def update(self, completed: int, total: int | None = None) -> None:
        pass

    def describe(self, description: str) -> None:
        pass


class NullProgress:
    def task(self, description: str, total: int | None, unit: str = "bytes") -> Task:
        return _NullTask()

    def note(self, message: str) -> None:
        pass

    def close(self) -> None:
        pass


class _RichTask:
    def __init__(self, progress, task_id):
        self._progress, self._id = progress, task_id

    def advance(self, n: int) -> None:
        self._progress.advance(self._id, n)

    def update(self, completed: int, total: int | None = None) -> None:
        if total is not None:
            self._progress.update(self._id, total=total)
        self._progress.update(self._id, completed=completed)

    def describe(self, description: str) -> None:
        """A new description (a training loss, say) for the bar."""
        self._progress.update(self._id, description=description)


class _AmountColumn:
    """'12.3/98.4 MB  45.6 MB/s' for bytes, '120/570 items  3.2 items/s' for anything else."""

    def __new__(cls):
        from rich.progress import ProgressColumn
        from rich.text import Text

        class Column(ProgressColumn):
            def render(self, task):
                unit = task.fields.get("unit", "bytes")
                rate = task.finished_speed or task.speed
                if unit == "bytes":
                    total = f"{task.total / 1e6:.1f}" if task.total else "?"
                    speed = f"{rate / 1e6:.1f} MB/s" if rate else "?"
                    return Text(f"{task.completed / 1e6:.1f}/{total} MB  {speed}")
                total = f"{task.total:.0f}" if task.total else "?"
                speed = f"{rate:.1f} {unit}/s" if rate else "?"
                return Text(f"{task.completed:.0f}/{total} {unit}  {speed}")

        return Column()


class RichProgress:
    """Bars on stderr: description, bar, percent, amount and rate, elapsed, ETA."""

    def __init__(self, file=None):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as _Progress

        self.console = Console(file=file or sys.stderr)
        self._interactive = self.console.is_terminal
        self._bars = _Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            _AmountColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
            disable=not self._interactive,
        )
        self._started = False

    def task(self, description: str, total: int | None, unit: str = "bytes") -> Task:
        if not self._started:
            self._bars.start()
            self._started = True
        if not self._interactive:
            if unit == "bytes":
                size = f" ({total / 1e6:.1f} MB)" if total else ""
            else:
                size = f" ({total} {unit})" if total else ""
            self.console.print(f"{description}{size}", highlight=False)
        return _RichTask(self._bars, self._bars.add_task(description, total=total, unit=unit))

    def note(self, message: str) -> None:
        """A line for people: options named as the command line spells them (``option``), the
        text as it is (a path with brackets in it is not rich markup), on one line (a log
        of a run is read with grep)."""
        from pocketlm.errors import render

        self.console.print(render(message, "cli"), highlight=False, markup=False, soft_wrap=True)

    def close(self) -> None:
        if self._started:
            self._bars.stop()
            self._started = False
