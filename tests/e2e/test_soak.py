"""`make soak` in its short mode: tests/stress/soak.py against `make run`'s gateway for a few seconds
of mixed traffic (sessions opened and ended, every list, calls on all three example servers). Every
answer must be right; the report must hold the memory samples and latency windows `make soak` plots."""

from __future__ import annotations

import json
import subprocess
import sys

import harness

SOAK = harness.REPO_ROOT / "tests" / "stress" / "soak.py"


def test_short_soak_has_no_errors(tmp_path):
    report = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, str(SOAK), "--seconds", "15", "--clients", "4", "--sample", "1",
                          "--json", str(report), "--svg", str(tmp_path / "soak.svg"), "--run-dir", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=600, cwd=harness.REPO_ROOT)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    doc = json.loads(report.read_text())
    assert doc["errors"] == 0 and doc["requests"] > 100, doc
    assert len(doc["samples"]) >= 5 and all(e > 0 and s > 0 for _, e, s in doc["samples"]), doc["samples"]
    assert all(w["requests"] > 0 for w in doc["windows"]), doc["windows"]
    assert (tmp_path / "soak.svg").read_text().startswith("<svg")
