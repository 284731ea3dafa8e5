"""Short mode of tests/stress/churn.py (the 30-minute run is `make soak`): keep-alive load through a
fresh Envoy while the servers file changes and a server flaps; every answer must be a result, Envoy
must count no 4xx/5xx, no VM may reload, and servers the churn never touches must never leave the
catalog."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stress"))

import churn  # noqa: E402


def test_calls_survive_configuration_churn_and_flaps(tmp_path: Path) -> None:
    results = churn.run(rounds=2, minutes=None, seconds=8, concurrencies=[2, 3], connections=[16, 32],
                        seed=1234, workdir=tmp_path)
    failed = [r for r in results if not r.ok]
    assert not failed, "\n".join(f"{r} (logs: {tmp_path})" for r in failed)
    assert all(r.config_versions > 0 for r in results), "the churn changed nothing"
