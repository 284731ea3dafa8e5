#!/usr/bin/env python3
"""The demo MCP server (tests/servers/demo_server.py: tools echo/add/whoami, /_log, /_health,
--require-bearer) served over HTTPS, for the sidecar's TLS tests.

    tls_server.py --name secure --port 18443 --certfile server.pem --keyfile server.key [--require-bearer TOKEN]

Listens on 127.0.0.1 only; clients reach it as https://localhost:PORT/mcp (the certificate from the
test CA names `localhost` and `127.0.0.1`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_server  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--certfile", required=True)
    p.add_argument("--keyfile", required=True)
    p.add_argument("--require-bearer", metavar="TOKEN")
    args = p.parse_args(argv)

    server = demo_server.build(args.name, 0)
    app = server.streamable_http_app(streamable_http_path="/mcp", json_response=False, stateless_http=False,
                                     host=args.host)
    wrapped = demo_server.Recorder(app, "/mcp", args.require_bearer)
    config = uvicorn.Config(wrapped, host=args.host, port=args.port, log_level="warning", lifespan="on",
                            ssl_certfile=args.certfile, ssl_keyfile=args.keyfile)
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
