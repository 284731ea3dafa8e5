#!/usr/bin/env python3
"""`make run`: the gateway on 127.0.0.1 in static mode, with two example MCP servers behind it.

Starts tests/servers/demo_server.py twice ("alpha", tools prefixed `alpha_`; "beta", prefixed `beta_`;
each requires its own bearer token, which the gateway injects), asks each for its tools/list, writes
the plugin configuration with that catalog, and runs Envoy with target/mcpgw.wasm (built by `make`)
on 127.0.0.1:8080 (env MCPGW_PORT overrides). Logs and the generated envoy config go to .run/; the
session-sealing key is generated once into .run/session.key. Ctrl-C stops everything.

    scripts/run.py                       # run
    scripts/run.py --write-example FILE  # write the static example bootstrap (the checked-in envoy.yaml)
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import shlex
import signal
import socket
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
sys.path.insert(0, str(REPO / "tests" / "servers"))

import harness  # noqa: E402

RUN_DIR = REPO / ".run"
KEY_FILE = RUN_DIR / "session.key"
SERVERS = [("alpha", "alpha_", "alpha-secret"), ("beta", "beta_", "beta-secret")]

# The checked-in example (envoy.yaml): fixed ports, a fixed key that must never be used for real.
EXAMPLE_PORTS = {"alpha": 18081, "beta": 18082}
EXAMPLE_LISTEN, EXAMPLE_ADMIN = 8080, 9901
EXAMPLE_KEY = base64.b64encode(b"example-only-key-do-not-use!!!!!").decode()


def session_key() -> dict[str, str]:
    """The key in .run/session.key (created on first use: base64 of 32 random bytes)."""
    RUN_DIR.mkdir(exist_ok=True)
    if not KEY_FILE.exists():
        fd = os.open(KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    secret = KEY_FILE.read_text().strip()
    if len(base64.b64decode(secret)) != 32:
        raise SystemExit(f"{KEY_FILE}: expected base64 of 32 bytes; delete it to generate a new one")
    return {"id": "run", "secret": secret}


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((harness.HOST, port))
            return True
        except OSError:
            return False


def usage(url: str, tools: list[str]) -> str:
    h = "-H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream'"
    init = ('{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
            '"capabilities":{},"clientInfo":{"name":"curl","version":"0"}}}')
    return f"""
MCP gateway ready: {url}
tools: {", ".join(tools)}

# initialize (note the Mcp-Session-Id response header), then list tools:
curl -sS -D- {url} {h} -d {shlex.quote(init)}
curl -sS {url} {h} -d '{{"jsonrpc":"2.0","id":2,"method":"tools/list"}}'

# a session and a call:
SID=$(curl -sS -D- -o /dev/null {url} {h} -d {shlex.quote(init)} | tr -d '\\r' | awk -F': ' 'tolower($1)=="mcp-session-id"{{print $2}}')
curl -sS {url} {h} -H "Mcp-Session-Id: $SID" -H 'MCP-Protocol-Version: 2025-11-25' \\
  -d '{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"alpha_echo","arguments":{{"text":"hi"}}}}}}'

# MCP Inspector CLI (Node >= 22.19):
npx @modelcontextprotocol/inspector --cli {url} --method tools/list
npx @modelcontextprotocol/inspector --cli {url} --method tools/call --tool-name beta_echo --tool-arg text=hi

Logs: {RUN_DIR}/*.log   Ctrl-C stops everything.
"""


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def run(port: int) -> int:
    if not harness.WASM_PATH.exists():
        print(f"run: {harness.WASM_PATH} is missing; build it with ./build.sh (make run does)", file=sys.stderr)
        return 1
    if not port_free(port):
        print(f"run: 127.0.0.1:{port} is in use; set MCPGW_PORT to another port", file=sys.stderr)
        return 1
    RUN_DIR.mkdir(exist_ok=True)
    key = session_key()
    servers = {name: harness.DemoServer(name, RUN_DIR, credential=cred) for name, _, cred in SERVERS}
    gateway = None
    # SIGTERM behaves like Ctrl-C so that everything is stopped either way.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        print("starting demo servers ...", flush=True)
        harness.start_all(servers.values())
        entries, names = [], []
        for name, prefix, _ in SERVERS:
            s = servers[name]
            tools = harness.discover_tools(s.url, s.auth_headers())
            entries.append(harness.server_entry(s, prefix, tools))
            names += [prefix + t["name"] for t in tools]
            print(f"  {name}: {s.url} ({len(tools)} tools)", flush=True)
        doc = harness.gateway_document(entries, keys=[key], version="run-static")
        gateway = harness.Gateway(RUN_DIR, upstreams=list(servers.values()), plugin_config={"document": doc},
                                  listen_port=port)
        print(f"starting envoy ({gateway.config_path}, admin http://127.0.0.1:{gateway.admin_port}) ...", flush=True)
        gateway.start()
        print(usage(gateway.url, names), flush=True)
        procs = [gateway.envoy, *servers.values()]
        while True:
            for p in procs:
                if not p.running:
                    print(f"run: {p.name} exited with code {p.returncode}\n{p.tail()}", file=sys.stderr)
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    except harness.HarnessError as e:
        print(f"run: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if gateway is not None:
            gateway.stop()
        for s in servers.values():
            s.stop()


def example_tools(name: str) -> list[dict]:
    """The demo server's catalog, listed in-process (what its tools/list returns on the wire)."""
    import anyio

    import demo_server

    server = demo_server.build(name, 0)
    tools = anyio.run(server.list_tools)
    return [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools]


def example_yaml() -> str:
    entries = []
    for name, prefix, cred in SERVERS:
        entries.append({
            "name": name, "prefix": prefix, "authority": harness.authority_of(name), "path": "/mcp",
            "cluster": name, "host": f"127.0.0.1:{EXAMPLE_PORTS[name]}",
            "headers": [{"name": "authorization", "value": f"Bearer {cred}"}],
            "tools": example_tools(name),
        })
    doc = harness.gateway_document(entries, keys=[{"id": "example", "secret": EXAMPLE_KEY}], version="example")
    bootstrap = harness.envoy_bootstrap(
        listen_port=EXAMPLE_LISTEN, admin_port=EXAMPLE_ADMIN,
        upstreams=[(name, EXAMPLE_PORTS[name]) for name, _, _ in SERVERS],
        plugin_config={"document": doc}, wasm_path="target/mcpgw.wasm", pretty_config=True)
    servers = "\n".join(
        f"#   .venv/bin/python tests/servers/demo_server.py --name {n} --port {EXAMPLE_PORTS[n]} --require-bearer {c} &"
        for n, _, c in SERVERS)
    header = f"""\
# Static example: Envoy + the mcpgw plugin in front of two demo MCP servers, all on 127.0.0.1.
# GENERATED by `scripts/run.py --write-example envoy.yaml`; edit the generator, not this file.
# The session key below is public: for local experiments only. `make run` generates a real one.
# Run from the repository root (the .wasm path is relative), after ./build.sh:
{servers}
#   .venv/bin/envoy -c envoy.yaml --concurrency 2 --disable-hot-restart --component-log-level wasm:info
# MCP endpoint: http://127.0.0.1:{EXAMPLE_LISTEN}/mcp
"""
    return header + harness.to_yaml(bootstrap)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write-example", metavar="FILE", help="write the static example bootstrap and exit")
    args = p.parse_args(argv)
    if args.write_example:
        Path(args.write_example).write_text(example_yaml())
        return 0
    try:
        port = int(os.environ.get("MCPGW_PORT", "8080"))
    except ValueError:
        print("run: MCPGW_PORT must be a port number", file=sys.stderr)
        return 2
    return run(port)


if __name__ == "__main__":
    sys.exit(main())
