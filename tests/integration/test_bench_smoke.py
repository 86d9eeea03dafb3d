"""The registry benchmark runs end to end on a small registry and reports every figure.

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

BENCH = REPO_ROOT / "bench" / "registry.py"
SMALL_RUN = ["--versions", "200", "--models", "20", "--blob-mb", "2", "--samples", "50"]
FIGURES = {
    "register_first_ms",
    "register_batch_versions_per_s",
    "register_single_per_s",
    "register_single_window_min_per_s",
    "register_single_window_max_per_s",
    "register_single_overall_per_s",
    "register_single_server_mean_ms",
    "register_duration_s",
    "alias_set_per_s",
    *(
        f"{kind}_{pct}_ms"
        for kind in ("resolve_alias", "resolve_version_by_alias", "search_tag", "search_metric")
        for pct in ("p50", "p99", "server_mean")
    ),
    "blob_upload_mb_per_s",
    "bare_upload_mb_per_s",
    "blob_download_mb_per_s",
    "bare_download_mb_per_s",
    "blob_upload_vs_bare",
    "blob_download_vs_bare",
    "blob_stored_ratio",
    "total_duration_s",
}


@pytest.mark.timeout(180)
def test_small_run_reports_every_figure_as_a_positive_number() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), *SMALL_RUN, "--json"],
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
    assert set(figures) == FIGURES
    for name, value in figures.items():
        assert isinstance(value, int | float) and not isinstance(value, bool), (name, value)
        assert math.isfinite(value) and value > 0, (name, value)
    assert set(report["units"]) == FIGURES
    assert report["config"]["versions"] == 200
