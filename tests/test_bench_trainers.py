"""Smoke test of bench/trainers.py: ``--quick`` in a subprocess, as CI runs it. No
timings are asserted, since CI machines differ; only that every trainer is measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "trainers.py"


def test_quick_json_measures_every_trainer() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json"], capture_output=True,
                         text=True, timeout=300, check=True)
    doc = json.loads(out.stdout)
    assert doc["machine"]["quick"] is True
    rows = {r["trainer"]: r for r in doc["trainers"]}
    assert set(rows) == {"mlp", "mup_mlp", "grokking", "densenet", "preact_resnet"}
    for r in rows.values():
        assert r["samples_per_second"] > 0 and r["seconds_per_unit"] > 0
        assert r["flops_per_unit"] and r["flops_per_unit"] > 0
    assert rows["grokking"]["resource_unit"] == "100 steps"
    for r in rows.values():  # what each row measured, for comparing machines
        assert r["recipe"] == "paper" and r["dtype"] == "fp32"
        assert r["compiled"] is False and r["channels_last"] is False
    for cnn in ("densenet", "preact_resnet"):
        assert rows[cnn]["cifar10_epoch_seconds"] > 0


def test_table_and_peak_override() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--trainers", "mlp",
                          "--peak-tflops", "1"], capture_output=True, text=True, timeout=300,
                         check=True)
    assert "| mlp | paper | fp32 | no | no | no | epoch |" in out.stdout
    assert "%" in out.stdout.split("| mlp |")[1]  # the fraction of the given peak
