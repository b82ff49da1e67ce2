"""Smoke test of ``bench/carbs.py --quick``: hpod's ``carbs`` against random search on
both problems at a tiny budget, in its own process as a user would run it, writing its table,
JSON and plot. imbue's reference is requested without an interpreter for it, so the benchmark
must skip it and say why. No timings or hypervolume orderings are asserted: two seeds on a few
percent of a budget say nothing about which method is better."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "carbs.py"


def test_quick_run_writes_its_table_and_plot_and_skips_the_reference(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    env = {k: v for k, v in os.environ.items() if k != "HPOD_CARBS_PYTHON"}
    out = subprocess.run([sys.executable, str(BENCH), "--quick", "--jobs", "1",
                          "--methods", "carbs,random,imbue-carbs", "--carbs-python", "",
                          "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, check=True, env=env)
    table = (tmp_path / "carbs-quick.md").read_text()
    assert table in out.stdout
    res = json.loads((tmp_path / "carbs-quick.json").read_text())
    assert res["setup"]["reference"]["ran"] is False
    assert res["setup"]["reference"]["why"].startswith("skipped: no --carbs-python")
    assert "imbue-carbs: skipped" in out.stdout
    assert set(res["hypervolume"]) == {"scaling-law", "mup-digits"}
    for problem, rows in res["hypervolume"].items():
        assert set(rows) == {"carbs", "random"}, problem
        for method, row in rows.items():
            assert row["seeds"] == 2
            cells = [row[k] for k in ("25%", "50%", "100%")]
            for cell in cells:
                assert 0.0 <= cell["q1"] <= cell["median"] <= cell["q3"] <= 1.0 + 1e-9
            assert f"| {problem} | {method} |" in table
    # A front only improves as trials end: every run's hypervolume curve never falls.
    for problem, methods in res["curves"].items():
        for method, curve in methods.items():
            steps = zip(curve["median"], curve["median"][1:], strict=False)
            assert all(b >= a - 1e-12 for a, b in steps), (problem, method)
    runs = res["runs"]
    assert len(runs) == 2 * 2 * 2
    for run in runs:
        spent = [at for at, _, _ in run["ends"]]
        assert spent == sorted(spent)
        assert all(cost > 0 for _, cost, _ in run["ends"])
    # The analytic problem's true front scores 1 against itself.
    norm = res["normalisation"]["scaling-law"]
    assert norm["best_front_hypervolume"] > 0.5
    assert (tmp_path / "carbs-quick.png").stat().st_size > 0


def test_hypervolume_of_simple_fronts() -> None:
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('bench_carbs', {str(BENCH)!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['bench_carbs'] = m\n"
        "spec.loader.exec_module(m)\n"
        "hv = m.hypervolume\n"
        "assert hv([]) == 0.0 and hv([(0.0, 0.0)]) == 1.0\n"
        "assert abs(hv([(0.5, 0.5)]) - 0.25) < 1e-12\n"
        "assert abs(hv([(0.0, 0.5), (0.5, 0.0)]) - 0.75) < 1e-12\n"
        "assert abs(hv([(0.5, 0.0), (0.0, 0.5), (0.7, 0.9)]) - 0.75) < 1e-12\n"
        "assert hv([(-1.0, 2.0)]) == 0.0\n"
        "p = m.ScalingLaw(); s = m.Scale(*p.cost_range(), *p.value_range())\n"
        "c, v = p.front(); assert s.point(c[0], v[0]) == (0.0, 1.0)\n"
        "assert abs(s.point(c[-1], v[-1])[0] - 1.0) < 1e-12 and s.point(c[-1], v[-1])[1] == 0\n"
        "print('ok')\n")
    # In a subprocess: importing the benchmark registers its two algorithms in hpod's registry.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True)
    assert out.stdout.strip() == "ok"
