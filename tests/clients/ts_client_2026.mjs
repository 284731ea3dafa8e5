#!/usr/bin/env node
// The TypeScript SDK client of the 2026-07-28 generation (@modelcontextprotocol/client, as installed in
// tools/clients) for tests/e2e/test_mcp2026.py: lists every tool (following nextCursor), calls
// beta_echo, prints {version, names, text} as JSON.
//
//   node tests/clients/ts_client_2026.mjs URL pin|auto
//
// MCPGW_CLIENTS_DIR overrides where the SDK is installed (default tools/clients).

import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const CLIENTS_DIR = process.env.MCPGW_CLIENTS_DIR || resolve(HERE, '..', '..', 'tools', 'clients');
const entry = join(CLIENTS_DIR, 'node_modules', '@modelcontextprotocol', 'client', 'dist', 'index.mjs');
const { Client, StreamableHTTPClientTransport } = await import(pathToFileURL(entry).href);

const [url, how] = process.argv.slice(2);
const mode = how === 'auto' ? 'auto' : { pin: '2026-07-28' };
const client = new Client({ name: 'ts-2026', version: '0.0.1' }, { versionNegotiation: { mode } });
await client.connect(new StreamableHTTPClientTransport(new URL(url)));
const names = [];
let cursor;
for (let page = 0; page < 20; page++) {
  const r = await client.listTools(cursor === undefined ? {} : { cursor });
  names.push(...r.tools.map((t) => t.name));
  cursor = r.nextCursor;
  if (cursor === undefined) break;
}
const r = await client.callTool({ name: 'beta_echo', arguments: { text: 'ts' } });
console.log(JSON.stringify({ version: client.getNegotiatedProtocolVersion(), names, text: r.content[0].text }));
await client.close();
