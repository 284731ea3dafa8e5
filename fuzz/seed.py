#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into fuzz/corpus/<target>/ from e2e-like traffic:
the bodies clients send (initialize, tools/call, prompts/get, resources/read, ...), SSE answers as
upstreams send them, configuration documents like tests/e2e/conftest.py builds, session tokens
sealed with the fuzz configuration's keys, origins and relayed ids.

    .venv/bin/python fuzz/seed.py      # rewrites fuzz/corpus/ (deterministic; commit the result)

Each file is named by the SHA-1 of its content (as libFuzzer names corpus entries). The input
layouts are documented at the top of each fuzz/fuzz_targets/<target>.rs. Needs `cryptography`
(in the project venv) for the session tokens.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import struct
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

CORPUS = Path(__file__).resolve().parent / "corpus"
PROTOCOL_VERSIONS = ["2025-11-25", "2025-06-18", "2025-03-26"]


def j(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def rpc(method: str, params=None, id=1) -> dict:
    message = {"jsonrpc": "2.0", "id": id, "method": method}
    if params is not None:
        message["params"] = params
    return message


# --- client bodies (jsonrpc) -----------------------------------------------------------------

def client_bodies() -> list[bytes]:
    initialize = rpc("initialize", {
        "protocolVersion": PROTOCOL_VERSIONS[0],
        "capabilities": {"roots": {"listChanged": True}, "sampling": {}, "elicitation": {}},
        "clientInfo": {"name": "e2e", "version": "1.0"},
    }, id=0)
    bodies = [j(m) for m in [
        initialize,
        rpc("ping", id="p-1"),
        rpc("tools/list", {}),
        rpc("tools/list", {"cursor": base64.urlsafe_b64encode(b"tools:1").rstrip(b"=").decode()}),
        rpc("tools/call", {"name": "alpha_echo", "arguments": {"text": "hello"}}, id=2),
        rpc("tools/call", {"name": "beta_add", "arguments": {"a": 2, "b": 40}}, id="call-3"),
        rpc("tools/call", {"name": "alpha_whoami", "arguments": {}, "_meta": {"progressToken": 7}}, id=4),
        rpc("tools/call", {"name": "beta_t0001", "arguments": {"x": [1, 2, {"y": "z"}]}}, id=-5),
        rpc("prompts/list", None),
        rpc("prompts/get", {"name": "alpha_greet", "arguments": {"who": "world"}}, id=6),
        rpc("resources/list", {}),
        rpc("resources/templates/list", {}),
        rpc("resources/read", {"uri": "mcpgw://alpha/test://static/resource/1"}, id=7),
        rpc("resources/read", {"uri": "file:///beta/readme.txt"}, id=8),
        rpc("resources/subscribe", {"uri": "mcpgw://alpha/test://w"}, id=9),
        rpc("resources/unsubscribe", {"uri": "mcpgw://alpha/test://w"}, id=10),
        rpc("completion/complete", {"ref": {"type": "ref/prompt", "name": "alpha_greet"},
                                    "argument": {"name": "who", "value": "w"}}, id=11),
        rpc("completion/complete", {"ref": {"type": "ref/resource", "uri": "mcpgw://alpha/test://{x}"},
                                    "argument": {"name": "x", "value": "1"}}, id=12),
        rpc("logging/setLevel", {"level": "debug"}, id=13),
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2, "reason": "x"}},
        {"jsonrpc": "2.0", "id": "mcpgw:alpha:3", "result": {"role": "assistant", "content": {"type": "text", "text": "hi"}}},
        {"jsonrpc": "2.0", "id": "mcpgw:beta:\"s-1\"", "result": {"action": "accept", "content": {}}},
        {"jsonrpc": "2.0", "id": "mcpgw:alpha:0", "error": {"code": -1, "message": "declined"}},
        {"jsonrpc": "2.0", "id": "mcpgw:alpha:007", "result": {"roots": []}},
    ]]
    # Spellings the gateway must read exactly (escapes, whitespace) or refuse.
    bodies += [
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"n\\u0061me":"alpha_\\u0065cho","arguments":{}}}',
        b' {\n  "jsonrpc" : "2.0" ,\r\n  "id" : 1 , "method" : "tools/call",\t"params" : { "name" : "alpha_echo" } }\n',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"alpha_echo","Name":"beta_whoami"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"alpha_echo","name":"beta_whoami"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"ping","METHOD":"tools/call"}',
        b'{"jsonrpc":"2.0","\\u0131d":1,"method":"ping"}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"alpha_echo","arguments":{"x":'
        + b"[" * 70 + b"1" + b"]" * 70 + b"}}}",
        b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]',
        b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a_echo","arguments":{"t":"\\\\","u":"[[\\"{{"}}}',
        b'"just a string"',
        b"",
    ]
    # With a replacement name after 0xFF: plain, an escaped JSON literal, non-ASCII, quotes.
    call = j(rpc("tools/call", {"name": "alpha_echo", "arguments": {"text": "hi"}}))
    bodies += [call + b"\xff" + name for name in
               [b"echo", b'"\\u0065cho"', "é名".encode(), b'say "hi"\\', b""]]
    prompt = j(rpc("prompts/get", {"name": "alpha_greet"}))
    bodies += [prompt + b"\xffgreet"]
    return bodies


# --- SSE bodies (sse) --------------------------------------------------------------------------

def sse_bodies() -> list[bytes]:
    request = j(rpc("sampling/createMessage", {"messages": [], "maxTokens": 10}, id=3))
    elicit = j(rpc("elicitation/create", {"message": "name?", "requestedSchema": {}}, id="e-1"))
    result = j({"jsonrpc": "2.0", "id": 2, "result": {"content": [{"type": "text", "text": "alpha: hello"}]}})
    updated = j({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "test://w"}})
    progress = j({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 7, "progress": 1}})
    init = j({"jsonrpc": "2.0", "id": 0, "result": {"protocolVersion": "2025-06-18", "capabilities": {}}})
    bodies = [
        b"event: message\r\nid: e1\r\ndata: " + result + b"\r\n\r\n",
        b"id: 0\nretry: 100\n\nevent: message\ndata: " + request + b"\n\nevent: message\ndata: " + result + b"\n\n",
        b"data: " + elicit + b"\r\rdata: " + updated + b"\r\r: keep-alive\r\rdata: " + progress + b"\r\r",
        b"event: message\r\nid: 1\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n: ping\n\ndata:x\rdata: y\r\r",
        b"id: 1\r\ndata: \r\n\r\nevent: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\r\n\r\n"
        b"data: {\"jsonrpc\":\"2.0\",\"id\":0,\"error\":{\"code\":-1,\"message\":\"no\"}}\r\n\r\n",
        b"event: message\ndata: " + init + b"\n\n",
        b"retry: 5\ndata: a\n\ndata: unterminated",
        b"data\n\nid: a\x00b\ndata: \xff\xfe\n\nretry: 99999999999999999999999\ndata: x\n\n",
    ]
    seeds = []
    for i, body in enumerate(bodies):
        seeds.append(bytes([0]) + body)  # one chunk
        cuts = [len(body) // 2, len(body) // 3, 7 * i % (len(body) + 1)]
        seeds.append(bytes([len(cuts)]) + b"".join(struct.pack("<H", c) for c in cuts) + body)
    # Every byte its own chunk, on a CRLF body.
    small = b"data: " + result + b"\r\n\r\n"
    seeds.append(bytes([16]) + b"".join(struct.pack("<H", c) for c in range(16)) + small)
    return seeds


# --- configuration documents (config) ----------------------------------------------------------

def tool(name: str, description: str, properties: dict) -> dict:
    return {"name": name, "description": description,
            "inputSchema": {"type": "object", "properties": properties, "required": list(properties)}}


DEMO_TOOLS = [
    tool("echo", "Echo the text back, prefixed with the server's name.", {"text": {"type": "string"}}),
    tool("add", "Add two integers.", {"a": {"type": "integer"}, "b": {"type": "integer"}}),
    tool("whoami", "Return the HTTP request headers this server received for this call, as JSON.", {}),
]


def server_entry(name: str, prefix: str, tools: list, **extra) -> dict:
    entry = {
        "name": name, "prefix": prefix, "authority": f"{name}.mcp.local", "path": "/mcp",
        "cluster": name, "host": "127.0.0.1:18081",
        "headers": [{"name": "authorization", "value": f"Bearer {name}-secret"}],
        "tools": tools,
    }
    entry.update(extra)
    return entry


def document(servers: list, *, limits=None, gateway=None, version="static-1", keys=None) -> dict:
    doc = {
        "version": version,
        "session": {"keys": keys or [{"id": "k1", "secret": base64.b64encode(bytes(range(32))).decode()}],
                    "ttl_seconds": 3600},
        "servers": servers,
    }
    if gateway:
        doc["gateway"] = gateway
    if limits:
        doc["limits"] = limits
    return doc


def documents() -> list[bytes]:
    extra = [tool(f"t{i:04d}", f"Extra tool t{i:04d}.", {}) for i in range(1, 4)]
    alpha = server_entry("alpha", "alpha_", DEMO_TOOLS, forward_headers=["x-tenant"])
    beta = server_entry("beta", "beta_", DEMO_TOOLS + extra)
    e2e = document([alpha, beta], limits={"page_size": 4, "max_body_bytes": 65536, "upstream_timeout_ms": 5000},
                   gateway={"name": "mcpgw-e2e", "version": "9.9.9"})
    everything = server_entry(
        "everything", "ev_", DEMO_TOOLS,
        prompts=[{"name": "greet", "arguments": [{"name": "who", "required": True}]}, {"name": "simple"}],
        resources=[{"uri": "test://static/resource/1", "name": "r1", "mimeType": "text/plain"},
                   {"uri": "test://static/resource/2", "name": "r2"}],
        resource_templates=[{"uriTemplate": "test://static/resource/{id}", "name": "tpl"}],
        capabilities={"prompts": {}, "resources": {"subscribe": True, "listChanged": True},
                      "completions": {}, "logging": {}, "tools": {}},
    )
    plain = server_entry("files", "", [tool("read", "Read a file.", {"path": {"type": "string"}})],
                         resources=[{"uri": "file:///readme.txt", "name": "readme"}],
                         resource_templates=[{"uriTemplate": "file:///{path}", "name": "any"}])
    rotated = [{"id": "k2", "secret": base64.b64encode(bytes(range(32, 64))).decode()},
               {"id": "k1", "secret": base64.b64encode(bytes(range(32))).decode()}]
    docs = [
        e2e,
        document([everything, plain], limits={"page_size": 1, "max_json_depth": 3},
                 gateway={"name": "gw", "version": "1", "mcp_path": "/mcp", "instructions": "Use tools.",
                          "list_changed": True, "allowed_origins": ["https://app.example.com", "*"]},
                 keys=rotated),
        document([server_entry("solo", "", DEMO_TOOLS)], version="sidecar-7"),
        document([]),
        # Collisions (warnings), escapes in names and URIs, odd but valid definitions.
        document([server_entry("a", "x_", [{"name": "dup"}, {"name": "dup"}, {"name": "esc\"aped/\u00e9"}]),
                  server_entry("b", "x_", [{"name": "dup"}],
                               resources=[{"uri": "test://\u00e9/\"q\"", "name": "q"}])],
                 limits={"page_size": 2}),
    ]
    out = [j(d) for d in docs]
    out.append(json.dumps(e2e, indent=2).encode())
    out.append(b'{"version":"e","session":{"keys":[{"id":"k1","secret":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}]},'
               b'"servers":[{"name":"s","prefix":"s_","authority":"s","cluster":"s","tools":[{"n\\u0061me":"\\u0065cho"}],'
               b'"resources":[{"uri":"test:\\/\\/x","name":"x"}]}]}')
    # Refused documents: one per check, so the fuzzer starts next to each error path.
    bad = [
        document([server_entry("alpha", "alpha_", DEMO_TOOLS), server_entry("ALPHA", "b_", [])]),
        document([server_entry("a b", "", [])]),
        document([server_entry("a", "", [{"description": "no name"}])]),
        document([server_entry("a", "", [], resources=[{"name": "no uri"}])]),
        document([server_entry("a", "", [], forward_headers=["cookie"])]),
        document([], limits={"page_size": 0}),
        document([], keys=[{"id": "k1", "secret": "c2hvcnQ="}]),
        document([], gateway={"mcp_path": "mcp"}),
    ]
    out += [j(d) for d in bad]
    out.append(b'{"version":"1","session":{"keys":[]},"unknown":1}')
    return out


# --- cursors (cursor) --------------------------------------------------------------------------

def cursors() -> list[bytes]:
    def cursor(text: str) -> bytes:
        return base64.urlsafe_b64encode(text.encode()).rstrip(b"=")
    out = [cursor(f"{kind}:{page}") for kind in ["tools", "prompts", "resources", "resourceTemplates"]
           for page in [1, 2]]
    out += [cursor("tools:0"), cursor("tools:99"), cursor("tools:+1"), cursor("tools:-1"),
            cursor("resources:1:x"), cursor("tool:1"), cursor("resourceTemplates"),
            base64.urlsafe_b64encode(b"tools:1"), b"dG9vbHM6MQ==", b"dG9vbHM6MR", b"", b"null", "é".encode()]
    return out


# --- session tokens (session) ------------------------------------------------------------------
# XChaCha20-Poly1305 = HChaCha20 (a subkey from the key and the nonce's first 16 bytes), then
# IETF ChaCha20-Poly1305 with nonce 0^4 || nonce[16:24]. The keys are fuzz/fuzz_targets/session.rs'.

KEYS = {"k1": bytes(range(32)), "k2": bytes(range(32, 64))}
NOW = 1_750_000_000


def _rotl(v: int, n: int) -> int:
    return ((v << n) & 0xFFFFFFFF) | (v >> (32 - n))


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    s = list(struct.unpack("<4I", b"expand 32-byte k") + struct.unpack("<8I", key) + struct.unpack("<4I", nonce16))

    def qr(a, b, c, d):
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = _rotl(s[d] ^ s[a], 16)
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = _rotl(s[b] ^ s[c], 12)
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = _rotl(s[d] ^ s[a], 8)
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = _rotl(s[b] ^ s[c], 7)

    for _ in range(10):
        qr(0, 4, 8, 12); qr(1, 5, 9, 13); qr(2, 6, 10, 14); qr(3, 7, 11, 15)
        qr(0, 5, 10, 15); qr(1, 6, 11, 12); qr(2, 7, 8, 13); qr(3, 4, 9, 14)
    return struct.pack("<8I", *(s[0:4] + s[12:16]))


def seal(key_id: str, claims: bytes, nonce: bytes) -> bytes:
    subkey = hchacha20(KEYS[key_id], nonce[:16])
    sealed = ChaCha20Poly1305(subkey).encrypt(b"\0" * 4 + nonce[16:], claims, None)
    return key_id.encode() + b"." + base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=")


def claims_json(iat: int, pv: str, caps=None, info=None) -> bytes:
    # Exactly as serde_json serializes `Claims` (field order, compact, caps/info verbatim).
    out = b'{"iat":' + str(iat).encode() + b',"pv":' + j(pv)
    if caps is not None:
        out += b',"caps":' + caps
    if info is not None:
        out += b',"info":' + info
    return out + b"}"


def session_inputs() -> list[bytes]:
    caps = j({"roots": {"listChanged": True}, "sampling": {}})
    info = j({"name": "e2e", "version": "1.0"})
    tokens = [
        seal("k1", claims_json(NOW - 10, "2025-11-25", caps, info), bytes(range(24))),
        seal("k1", claims_json(NOW, "2025-06-18"), b"\x07" * 24),
        seal("k2", claims_json(NOW - 3600, "2025-03-26", b"{}"), bytes(range(100, 124))),
        seal("k1", claims_json(NOW + 10_000, "2025-11-25"), b"\x01" * 24),  # from the future
    ]
    out = [b"\x00" + t for t in tokens]
    out += [b"\x00" + t for t in [b"garbage", b"k1.", b"k1", b".", b"k3." + tokens[0][3:], b"\xff\xfe"]]
    out.append(b"\x00" + tokens[0][:-1])
    # Mutation mode: nonce, position, new byte, age, pv 0 caps 0 info.
    for i, (pv, c, inf) in enumerate([("2025-11-25", caps, info), ("2025-06-18", b"", b""), ("x", b"{}", b"null"),
                                      ("", b"", b"")]):
        payload = pv.encode() + (b"\0" + c if c or inf else b"") + (b"\0" + inf if inf else b"")
        for position in [0, 2, 3, 40, 65535]:
            out.append(b"\x01" + bytes([(i * 7 + position) % 256] * 24) + struct.pack("<HBI", position, i, 5 * i)
                       + payload)
    return out


# --- origins and relayed ids (origin, relay) ---------------------------------------------------

def origins() -> list[bytes]:
    return [o.encode() for o in [
        "http://localhost", "http://localhost:6274", "https://127.0.0.1:8443", "http://[::1]:3000",
        "HTTP://LOCALHOST", " http://localhost ", "http://evil.example", "http://localhost.evil.example",
        "http://127.0.0.1.evil.example", "http://localhost:99999", "file://localhost", "null", "",
        "http://[::2]", "https://app.example.com", "https://app.example.com:444", "http://[::1]",
        "http://localhost@evil.example", "http://evil.example#localhost",
    ]] + [b"http://\xff"]


def relay_inputs() -> list[bytes]:
    ids = ["mcpgw:alpha:7", 'mcpgw:b:"x:y"', "mcpgw:alpha:-12", 'mcpgw:alpha:"\\u0041"', "mcpgw:a:{}",
           "mcpgw:alpha:007", "mcpgw:alpha:1.5", "mcpgw::1", "7", "mcpgw:alpha:9223372036854775808"]
    out = [b"\x00" + i.encode() for i in ids]
    out += [b"\x01" + server + b"\x00" + id for server, id in
            [(b"alpha", b"7"), (b"b.c-d_e", b'"x:y"'), (b"alpha", b'"\\u0041\\n"'), (b"s", b"\xff\xff\xff\xff"),
             (b"alpha", b"")]]
    messages = [
        rpc("sampling/createMessage", {"messages": [], "maxTokens": 10}, id=3),
        rpc("elicitation/create", {"message": "?"}, id="e-1"),
        rpc("roots/list", None, id=0),
        {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "test://w"}},
        {"jsonrpc": "2.0", "id": 1, "result": {}},
        {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1}},
    ]
    for message in messages:
        out += [b"\x02" + j(message), b"\x06" + j(message)]
    out += [b"\x06" + b'{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"test://\\u00e9"}}',
            b"\x02" + b'[1,"m"]', b"\x02not json"]
    return out


def main() -> None:
    targets = {
        "jsonrpc": client_bodies(),
        "sse": sse_bodies(),
        "session": session_inputs(),
        "config": documents(),
        "cursor": cursors(),
        "origin": origins(),
        "relay": relay_inputs(),
    }
    for target, seeds in targets.items():
        directory = CORPUS / target
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        for seed in seeds:
            (directory / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
        print(f"{target}: {len(set(seeds))} seeds")


if __name__ == "__main__":
    main()
