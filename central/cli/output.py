"""How the command line speaks: tables for people, JSON for scripts, progress on a TTY.

Results go to stdout (one JSON document with ``--json``, aligned text
otherwise); notes, warnings and progress go to stderr so that stdout stays
parseable. What a record looks like as text is ``central.cli.render``'s job.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

__all__ = ["Output", "Progress", "fields", "format_bytes", "format_duration", "table"]

PROGRESS_MIN_BYTES = 1 << 20  # smaller transfers finish too fast to need a bar
_REDRAW_SECONDS = 0.1


class Output:
    """Where results, notes and progress are written."""

    def __init__(
        self, json_mode: bool, stdout: TextIO | None = None, stderr: TextIO | None = None
    ) -> None:
        self.json_mode = json_mode
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr

    def result(self, data: Any, render: Callable[[Any], str]) -> None:
        """Print a result: ``data`` as JSON with ``--json``, else ``render(data)``."""
        if self.json_mode:
            self.json(data)
        else:
            self.text(render(data))

    def json(self, data: Any) -> None:
        """Print ``data`` as one JSON document."""
        print(json.dumps(data, indent=2, sort_keys=True), file=self.stdout, flush=True)

    def text(self, text: str) -> None:
        """Print text for people to stdout."""
        print(text, file=self.stdout, flush=True)

    def note(self, text: str) -> None:
        """Print a note to stderr (never mixed into results)."""
        print(text, file=self.stderr, flush=True)

    def progress(self, label: str, total: int) -> Progress:
        """A progress bar on stderr, drawn only when stderr is a terminal."""
        enabled = total >= PROGRESS_MIN_BYTES and _isatty(self.stderr)
        return Progress(label, total, self.stderr, enabled=enabled)


class Progress:
    """A one-line transfer progress bar: bytes, rate and time left."""

    def __init__(
        self,
        label: str,
        total: int,
        stream: TextIO,
        *,
        enabled: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self._stream = stream
        self._enabled = enabled
        self._clock = clock
        self._start = clock()
        self._drawn_at = float("-inf")

    def advance(self, nbytes: int) -> None:
        """Count ``nbytes`` more; redraw at most ten times a second."""
        self.done += nbytes
        now = self._clock()
        if self._enabled and now - self._drawn_at >= _REDRAW_SECONDS:
            self._drawn_at = now
            self._draw(now)

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self._enabled:
            self._draw(self._clock())
            self._stream.write("\n")
            self._stream.flush()

    def line(self, now: float) -> str:
        """The text of the bar at time ``now``."""
        elapsed = max(now - self._start, 1e-6)
        rate = self.done / elapsed
        pct = 100 * self.done // self.total if self.total else 100
        left = (self.total - self.done) / rate if rate > 0 else None
        eta = format_duration(left) if left is not None else "--:--"
        return (
            f"{self.label}  {format_bytes(self.done)}/{format_bytes(self.total)}"
            f"  {pct:3d}%  {format_bytes(int(rate))}/s  {eta} left"
        )

    def _draw(self, now: float) -> None:
        width = shutil.get_terminal_size((80, 24)).columns - 1
        self._stream.write("\r" + self.line(now)[:width].ljust(width))
        self._stream.flush()


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Align ``rows`` under ``headers`` in columns; ``(none)`` when empty."""
    if not rows:
        return "(none)"
    cells = [[str(h).upper() for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """Render ``name: value`` lines with aligned values."""
    width = max((len(name) for name, _ in pairs), default=0)
    return "\n".join(f"{name + ':':<{width + 1}} {_cell(value)}" for name, value in pairs)


def format_bytes(n: int) -> str:
    """``1536`` → ``1.5 KiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """``75`` → ``1:15``; ``3700`` → ``1:01:40``."""
    total = int(seconds + 0.5)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in sorted(value.items())) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value) or "-"
    return str(value)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
