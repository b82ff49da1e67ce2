"""The Node.js example (examples/node) runs a whole ask/tell study against a real server."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from hpod.client.local import LocalCluster

NODE_DIR = Path(__file__).resolve().parent.parent / "examples" / "node"


@pytest.fixture(scope="module")
def node_modules() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for the Node.js client (Debian: apt-get install "
                    "nodejs npm)")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        # The exact versions in the committed package-lock.json, nothing else.
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True,
                       capture_output=True, timeout=300)
    return NODE_DIR / "node_modules"


def test_node_client_runs_an_ask_tell_study(node_modules: Path, tmp_path) -> None:
    with LocalCluster(workers=0, workdir=str(tmp_path)) as cluster:
        run = subprocess.run(["node", str(NODE_DIR / "hpod_asktell.js"), "--address",
                              cluster.address, "--parallel", "2"], capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        out = json.loads(run.stdout.strip().splitlines()[-1])
        with cluster.client() as client:
            study = client.study(out["study_id"])
            assert study.state == "completed"
            trials = study.trials(curves=True)
            assert out["trials"] == len(trials) == study.info.plan.max_trials == 17
            assert all(t.state == "completed" for t in trials)
            best = study.best_trial()
            assert best is not None and out["best"]["trial"] == best.id
            assert out["best"]["config"] == best.config  # Struct read back exactly in JS
            # The client reported every step of every job: curves have no gaps.
            for t in trials:
                assert [r for r, _ in t.curve] == list(range(1, int(t.resource) + 1))
