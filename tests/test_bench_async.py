"""Smoke test of bench/async_vs_sync.py: every method runs and is summarised; no
timing is asserted (the clock is simulated, and the numbers belong in bench/README.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "async_vs_sync.py"


def test_small_run_summarises_every_method(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "avs.png"
    out = subprocess.run([sys.executable, str(BENCH), "--problems", "branin-mf", "--seeds", "2",
                          "--budget", "4", "--json", "--plot", str(png)],
                         capture_output=True, text=True, check=True, timeout=300)
    summary = json.loads(out.stdout)["branin-mf"]
    rows = {r["method"]: r for r in summary["rows"]}
    assert set(rows) == {"hyperband (sync)", "async-hyperband promotion",
                         "async-hyperband stopping", "asha promotion"}
    for target in summary["targets"]:
        base = rows["hyperband (sync)"]["targets"][str(target)]
        assert base["speedup_vs_sync"] == pytest.approx(1.0)
        for row in rows.values():
            cell = row["targets"][str(target)]
            assert cell["runs"] == 2 and 0 <= cell["reached"] <= 2
            assert cell["median_seconds"] > 0
    # The loosest target is 4x sync's final regret, which sync itself always reaches.
    assert rows["hyperband (sync)"]["targets"][str(summary["targets"][0])]["reached"] == 2
    assert png.stat().st_size > 10_000
