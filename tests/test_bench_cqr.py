"""Smoke test of ``bench/cqr.py --quick``: it runs end to end, in its own process as a
user would run it, and writes its table, JSON and plot. No timings or regret values are
asserted: two seeds on a budget of 2 R say nothing about which method is better."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "cqr.py"


def test_quick_run_writes_its_table_and_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = subprocess.run([sys.executable, str(BENCH), "--quick", "--jobs", "1",
                          "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, check=True)
    table = (tmp_path / "cqr-quick.md").read_text()
    assert table in out.stdout
    res = json.loads((tmp_path / "cqr-quick.json").read_text())
    methods = {"cqr", "random", "asha-cqr", "asha"}
    # Syne Tune's CQR and ASHACQR sit beside them where an interpreter has syne-tune
    # (HPOD_SYNE_PYTHON); elsewhere (CI) they are skipped, and the run says why.
    if res["setup"]["peers"].get("syne-tune"):
        methods |= {"syne-cqr", "syne-asha-cqr"}
    else:
        assert f"skipped syne-tune: {res['skipped']['syne-tune']}" in out.stdout
        if not os.environ.get("HPOD_SYNE_PYTHON"):
            assert res["skipped"]["syne-tune"].startswith("not installed")
    assert set(res["regret"]) == {"branin-curve", "branin-mf", "hartmann6-mf", "mlp-digits"}
    for problem, rows in res["regret"].items():
        assert set(rows) == methods, problem
        for method, row in rows.items():
            assert row["seeds"] == (1 if problem == "mlp-digits" else 2)
            for k in ("25%", "50%", "100%"):
                assert row[k]["q1"] <= row[k]["median"] <= row[k]["q3"], (problem, method)
            assert f"| {problem} | {method} |" in table
    assert (tmp_path / "cqr-quick.png").stat().st_size > 0


def test_methods_picks_which_run_and_stem_names_the_files(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    subprocess.run([sys.executable, str(BENCH), "--quick", "--jobs", "1", "--peers", "none",
                    "--problems", "branin-curve", "--methods", "cqr,random", "--out",
                    str(tmp_path), "--stem", "two"], capture_output=True, text=True,
                   timeout=600, check=True)
    res = json.loads((tmp_path / "two.json").read_text())
    assert (tmp_path / "two.md").exists() and not (tmp_path / "cqr-quick.json").exists()
    assert set(res["regret"]["branin-curve"]) == {"cqr", "random"}
    bad = subprocess.run([sys.executable, str(BENCH), "--methods", "cqr,tpe"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown method(s) tpe" in bad.stderr
