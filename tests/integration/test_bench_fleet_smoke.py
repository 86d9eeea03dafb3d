"""The fleet sync benchmark runs end to end in its quick mode and reports every figure.

Only the shape of the report is checked: timings vary by machine, so no value is
compared with a bar.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.support import REPO_ROOT, skiff_env

BENCH = REPO_ROOT / "bench" / "fleet.py"
FIGURES = {
    "first_sync_all_s",
    *(
        f"idle_{w}_{what}"
        for w in ("short", "long")
        for what in (
            "answers_per_s",
            "central_cpu_s",
            "central_cpu_pct",
            "central_cpu_ms_per_answer",
        )
    ),
    "move_p50_s",
    "move_p99_s",
    "move_max_s",
    "move_put_ms",
    "moves_window_s",
    "moves_central_cpu_s",
    "moves_central_cpu_pct",
    "fanout_window_s_per_move",
    "fanout_central_cpu_s",
    "fanout_central_cpu_pct",
    "fanout_central_cpu_ms_per_answer",
    "central_peak_rss_mb",
    "total_duration_s",
}


def _positive(name: str, value: object) -> None:
    assert isinstance(value, int | float) and not isinstance(value, bool), (name, value)
    assert math.isfinite(value) and value > 0, (name, value)


@pytest.mark.timeout(130)
def test_quick_run_reports_every_figure_as_a_positive_number() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json"],
        cwd=REPO_ROOT,
        env=skiff_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    report = json.loads(proc.stdout)
    figures = report["figures"]
    assert set(figures) == FIGURES, sorted(set(figures) ^ FIGURES)
    for name, value in figures.items():
        _positive(name, value)
    assert set(report["units"]) == FIGURES
    for name, value in report["diagnostics"].items():
        assert isinstance(value, int | float) and math.isfinite(value) and value >= 0, (name, value)
    counts = report["counts"]
    assert counts["moves"] == 2
    assert counts["move_devices_missed"] == 0
    assert counts["idle_short_answers"] > 0 and counts["idle_long_answers"] > 0
    moves = report["moves"]
    assert [m["move"] for m in moves] == [1, 2]
    for move in moves:
        assert move["devices"] == 50
        for key in ("put_ms", "first_s", "p50_s", "p99_s", "max_s"):
            _positive(f"move {move['move']} {key}", move[key])
    assert set(report["bars"]) == {"move_max_s", "central_peak_rss_mb"}
    assert report["config"]["quick"] is True
    assert report["config"]["devices"] == 50
