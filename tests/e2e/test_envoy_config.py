"""`envoy --mode validate` on the checked-in example and on the bootstraps the harness generates
(validation loads the plugin, so a broken .wasm or a rejected layout fails here).

The session gateways are validated too: every `Gateway(validate=True)` in conftest and the test
modules runs `envoy --mode validate` before starting Envoy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import harness

EXAMPLE = harness.REPO_ROOT / "envoy.yaml"
# The same example as a stock Istio WasmPlugin installs the filter (docs/mcp2026.md).
EXAMPLE_WASMPLUGIN = harness.REPO_ROOT / "envoy-wasmplugin.yaml"


def _require_wasm() -> None:
    if not harness.WASM_PATH.exists():
        pytest.fail(f"{harness.WASM_PATH} missing: run ./build.sh", pytrace=False)


@pytest.mark.parametrize("example", [EXAMPLE, EXAMPLE_WASMPLUGIN], ids=["envoy_filter", "wasm_plugin"])
def test_checked_in_example_validates(example):
    _require_wasm()
    ok, out = harness.envoy_validate(example)
    assert ok, out[-3000:]


@pytest.mark.parametrize("example,install", [(EXAMPLE, "envoy_filter"), (EXAMPLE_WASMPLUGIN, "wasm_plugin")],
                         ids=["envoy_filter", "wasm_plugin"])
def test_checked_in_example_is_current(tmp_path, example, install):
    """envoy.yaml and envoy-wasmplugin.yaml are generated; regenerate with
    `scripts/run.py --write-example envoy.yaml` (and `--write-example envoy-wasmplugin.yaml --install wasm_plugin`)."""
    fresh = tmp_path / example.name
    subprocess.run([sys.executable, str(harness.REPO_ROOT / "scripts" / "run.py"), "--write-example", str(fresh),
                    "--install", install], check=True, timeout=60)
    assert fresh.read_text() == example.read_text(), \
        f"{example.name} is stale: run `.venv/bin/python scripts/run.py --write-example {example.name} --install {install}`"


def test_generated_bootstraps_validate(tmp_path):
    """The layouts the harness produces for tests, run.py and the sidecar tests (extra cluster)."""
    _require_wasm()
    doc = harness.gateway_document([], keys=[harness.new_session_key()])
    variants = {
        "no-servers": harness.envoy_bootstrap(listen_port=1, admin_port=2, upstreams=[],
                                              plugin_config={"document": doc}),
        "two-servers-sidecar": harness.envoy_bootstrap(
            listen_port=1, admin_port=2, upstreams=[("alpha", 3), ("beta", 4)],
            plugin_config={"sidecar": {"cluster": "sidecar"}}, extra_clusters=[("sidecar", 5)],
            access_log=tmp_path / "access.log", pretty_config=True),
    }
    for name, bootstrap in variants.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(harness.to_yaml(bootstrap))
        ok, out = harness.envoy_validate(path)
        assert ok, f"{name}: {out[-3000:]}"


def test_validation_loads_the_plugin(tmp_path):
    """Validation is not vacuous: a configuration document the plugin rejects fails it."""
    _require_wasm()
    bad = harness.envoy_bootstrap(listen_port=1, admin_port=2, upstreams=[],
                                  plugin_config={"document": {"no_such_field": True}})
    path = tmp_path / "bad.yaml"
    path.write_text(harness.to_yaml(bad))
    ok, out = harness.envoy_validate(path)
    assert not ok, "envoy --mode validate accepted a plugin configuration the plugin must reject:\n" + out[-2000:]


def test_plugin_configuration_is_the_plugin_config_shape(gateway):
    """The session gateway's StringValue is a PluginConfig: {"document": GatewayConfig}."""
    cfg = gateway.bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["http_filters"][0]["typed_config"]["config"]
    assert cfg["allow_on_headers_stop_iteration"] is True
    doc = json.loads(cfg["configuration"]["value"])
    assert set(doc) == {"document"}
    assert {s["name"] for s in doc["document"]["servers"]} == {"alpha", "beta"}
