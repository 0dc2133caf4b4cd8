"""Progress bars of the stages (rich, imported when a bar is made), on stderr.

Progress is display only: nothing a bar shows is written to any output, so the output bytes are
the same with or without it, whatever the number of workers. A bar counts items (scenes, images,
objects) and shows their rate; a resumed run starts it at the items already done (their rate is
not counted: rich's speed is estimated from the advances of this run only).
"""

from __future__ import annotations

from typing import Any


def _rate_column(unit: str):
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """``12.3 scenes/s`` from rich's estimate over the last advances (blank before the first)."""

        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            if speed is None:
                return Text(f"- {unit}/s", style="progress.data.speed")
            return Text(f"{speed:.1f} {unit}/s" if speed < 100 else f"{speed:.0f} {unit}/s",
                        style="progress.data.speed")

    return RateColumn()


def progress_bars(unit: str, *, enabled: bool = True, label_width: int = 12, note: bool = False) -> Any:
    """A rich ``Progress`` on stderr whose tasks read ``LABEL ━━━ done/total UNIT  rate  elapsed
    remaining`` (``note``: a text field ``note`` after it, e.g. the category being worked on)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn(f"{{task.description:<{label_width}}}"), BarColumn(), MofNCompleteColumn(),
               TextColumn(unit), _rate_column(unit), TimeElapsedColumn(), TimeRemainingColumn()]
    if note:
        columns.append(TextColumn("{task.fields[note]}"))
    return Progress(*columns, console=Console(stderr=True), disable=not enabled, transient=False,
                    refresh_per_second=4)
