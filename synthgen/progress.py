"""Progress bars of the stages (rich, imported when a bar is made), on stderr.

Progress is display only: nothing a bar shows is written to any output, so the output bytes are
the same with or without it, whatever the number of workers. A bar counts items (scenes, images,
objects) and shows their rate; a resumed run starts it at the items already done (their rate is
not counted: rich's speed is estimated from the advances of this run only).
"""

from __future__ import annotations

from typing import Any


def _columns(unit: str, short: bool):
    from rich.progress import ProgressColumn
    from rich.text import Text

    class UnitColumn(ProgressColumn):
        """The task's unit (its field ``unit``, else the bars')."""

        def render(self, task) -> Text:
            return Text(task.fields.get("unit", unit))

    class RateColumn(ProgressColumn):
        """``12.3 scenes/s``: rich's estimate over the last advances, else the mean of this run
        (``-`` before the first advance)."""

        def render(self, task) -> Text:
            u = task.fields.get("unit", unit)
            speed = task.finished_speed or task.speed
            if speed is None and task.elapsed and task.completed > task.fields.get("begin", 0):
                speed = (task.completed - task.fields.get("begin", 0)) / task.elapsed
            if speed is None:
                return Text("-/s" if short else f"- {u}/s", style="progress.data.speed")
            per = "/s" if short else f" {u}/s"
            text = f"{speed:.2f}" if speed < 1 else f"{speed:.1f}" if speed < 100 else f"{speed:.0f}"
            return Text(text + per, style="progress.data.speed")

    return UnitColumn(), RateColumn()


def progress_bars(unit: str, *, enabled: bool = True, label_width: int = 10, note: bool = False) -> Any:
    """A rich ``Progress`` on stderr whose tasks read ``LABEL ━━━ done/total UNIT  rate  elapsed
    remaining``. A task's field ``unit`` replaces ``unit``; its field ``begin`` is where this run
    started it (for the mean rate). ``note``: the line ends ``rate/s  remaining  NOTE`` instead
    (a text field ``note``, e.g. the category being worked on), to fit 80 columns. Off a terminal
    (a log file) the lines are 120 wide, not rich's 80."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn(f"{{task.description:<{label_width}}}"), BarColumn(bar_width=16 if note else 24),
               MofNCompleteColumn(), *_columns(unit, short=note)]
    if note:  # (the bars start together: one elapsed time is enough, the summary line says it)
        columns += [TimeRemainingColumn(), TextColumn("{task.fields[note]}", markup=False)]
    else:
        columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    console = Console(stderr=True)
    if not console.is_terminal:
        console.width = max(console.width, 120)
    return Progress(*columns, console=console, disable=not enabled, transient=False, refresh_per_second=4)
