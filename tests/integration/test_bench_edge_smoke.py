"""The edge benchmark runs end to end in its quick mode and reports every figure.

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

BENCH = REPO_ROOT / "bench" / "edge.py"
FIGURES = {
    "a_agent_install_s",
    "a_raw_pipeline_s",
    "a_install_vs_raw",
    "a_raw_download_only_s",
    "a_ort_session_load_s",
    "a_agent_served_s",
    "a_served_vs_raw",
    "a_served_vs_raw_plus_load",
    "a_model_mb",
    "a_stored_ratio",
    *(f"b_{who}_{what}" for who in ("agent", "bare") for what in ("req_per_s", "p50_ms", "p99_ms")),
    "b_throughput_vs_bare",
    "b_throughput_vs_bare_pooled",
    "b_throughput_vs_bare_min",
    "b_throughput_vs_bare_max",
    *(f"c_{when}_{what}" for when in ("steady", "swaps") for what in ("p50_ms", "p99_ms")),
    "c_steady_req_per_s",
    "c_swaps_req_per_s",
    "c_p99_swaps_vs_steady",
    "c_swap_served_p50_s",
    "c_swap_served_max_s",
    "d_rss_start_mb",
    "d_rss_after_10_mb",
    "d_rss_after_20_mb",
    "d_rss_ratio",
    "d_swap_served_p50_s",
    "total_duration_s",
}
COUNTS = {
    "a_installs",
    "b_agent_failed_requests",
    "b_bare_failed_requests",
    "c_swaps",
    "c_failed_requests_steady",
    "c_failed_requests_during_swaps",
    "c_requests_during_swaps",
    "d_swaps",
}


@pytest.mark.timeout(180)
def test_quick_run_reports_every_figure_as_a_positive_number() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json"],
        cwd=REPO_ROOT,
        env=skiff_env(),
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert proc.returncode == 0, f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    report = json.loads(proc.stdout)
    figures = report["figures"]
    assert set(figures) >= FIGURES, sorted(FIGURES - set(figures))
    for name, value in figures.items():
        assert isinstance(value, int | float) and not isinstance(value, bool), (name, value)
        assert math.isfinite(value) and value > 0, (name, value)
    assert set(report["units"]) == set(figures)
    counts = report["counts"]
    assert set(counts) == COUNTS
    for name, value in counts.items():
        assert isinstance(value, int) and value >= 0, (name, value)
    assert counts["a_installs"] == 5
    assert counts["c_swaps"] == 5
    assert counts["d_swaps"] == 20
    ratios = {c["ratio_figure"] for c in report["comparisons"]}
    assert ratios == {
        "a_install_vs_raw",
        "b_throughput_vs_bare",
        "c_p99_swaps_vs_steady",
        "d_rss_ratio",
    }
    assert report["config"]["quick"] is True
