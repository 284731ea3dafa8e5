#!/usr/bin/env node
// A real TypeScript SDK client (@modelcontextprotocol/sdk, pinned in tools/clients/package.json) for
// tests/e2e/test_clients.py: Streamable HTTP, session era (initialize). It lists every tool (following
// nextCursor), calls <prefix>test_simple_text, gets the prompt <prefix>test_simple_prompt, lists the
// resources and reads the one named static-text, calls <prefix>test_sampling and
// <prefix>test_elicitation (answering the server's sampling/createMessage and elicitation/create),
// then terminates the session (DELETE) and prints one JSON object on stdout.
//
//   node tests/clients/ts_client.mjs URL [PREFIX]          (PREFIX defaults to c_)
//
// MCPGW_CLIENTS_DIR overrides where the SDK is installed (default tools/clients). Every HTTP exchange
// is recorded (method, JSON-RPC method, status) under `http`. Exit status 1 with a message on stderr
// when a step fails.

import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const CLIENTS_DIR = process.env.MCPGW_CLIENTS_DIR || resolve(HERE, '..', '..', 'tools', 'clients');
const SDK_DIR = join(CLIENTS_DIR, 'node_modules', '@modelcontextprotocol', 'sdk');
const STEP_TIMEOUT_MS = 15000;

const [url, prefix = 'c_'] = process.argv.slice(2);
if (!url) {
  console.error('usage: ts_client.mjs URL [PREFIX]');
  process.exit(2);
}
if (!existsSync(join(SDK_DIR, 'package.json'))) {
  console.error(`ts_client: ${SDK_DIR} is missing: run \`make setup\` (installs tools/clients)`);
  process.exit(2);
}
const sdk = (p) => import(pathToFileURL(join(SDK_DIR, 'dist', 'esm', p)).href);
const { Client } = await sdk('client/index.js');
const { StreamableHTTPClientTransport } = await sdk('client/streamableHttp.js');
const { CreateMessageRequestSchema, ElicitRequestSchema, LATEST_PROTOCOL_VERSION } = await sdk('types.js');
const { version: sdkVersion } = JSON.parse(readFileSync(join(SDK_DIR, 'package.json'), 'utf8'));

// Every HTTP exchange: what the transport sent and the status it got.
const http = [];
const recordingFetch = async (input, init = {}) => {
  let rpc;
  try {
    rpc = typeof init.body === 'string' ? JSON.parse(init.body).method : undefined;
  } catch {
    rpc = undefined;
  }
  const response = await fetch(input, init);
  http.push({ method: init.method || 'GET', rpc, status: response.status,
              contentType: response.headers.get('content-type') });
  return response;
};

const sampling = [];
const elicitation = [];
const client = new Client({ name: 'mcpgw-e2e-ts-client', version: '0.0.1' },
  { capabilities: { sampling: {}, elicitation: { form: {} } } });
client.setRequestHandler(CreateMessageRequestSchema, async (request) => {
  sampling.push(request.params);
  const prompt = request.params.messages?.[0]?.content?.text ?? '';
  return { role: 'assistant', content: { type: 'text', text: `ts sampled: ${prompt}` },
           model: 'ts-test-model', stopReason: 'endTurn' };
});
client.setRequestHandler(ElicitRequestSchema, async (request) => {
  elicitation.push(request.params);
  return { action: 'accept', content: { username: 'ts-user', email: 'ts@example.com' } };
});

async function step(what, fn) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${STEP_TIMEOUT_MS} ms`)), STEP_TIMEOUT_MS);
  });
  try {
    return await Promise.race([fn(), deadline]);
  } catch (e) {
    throw new Error(`${what}: ${e?.message ?? e}`);
  } finally {
    clearTimeout(timer);
  }
}

const out = { sdk: sdkVersion, latestProtocolVersion: LATEST_PROTOCOL_VERSION };
try {
  const transport = new StreamableHTTPClientTransport(new URL(url), { fetch: recordingFetch });
  await step('initialize', () => client.connect(transport));
  out.protocolVersion = transport.protocolVersion;
  out.server = client.getServerVersion();
  out.sessionId = transport.sessionId;

  const tools = [];
  let cursor;
  let pages = 0;
  do {
    const page = await step('tools/list', () => client.listTools(cursor === undefined ? {} : { cursor }));
    tools.push(...page.tools.map((t) => t.name));
    cursor = page.nextCursor;
    pages += 1;
    if (pages > 100) throw new Error('tools/list: still a nextCursor after 100 pages');
  } while (cursor !== undefined);
  out.tools = tools;
  out.toolPages = pages;

  out.simpleText = await step('tools/call simple_text',
    () => client.callTool({ name: `${prefix}test_simple_text`, arguments: {} }));
  out.prompt = await step('prompts/get', () => client.getPrompt({ name: `${prefix}test_simple_prompt` }));

  const { resources } = await step('resources/list', () => client.listResources());
  out.resources = resources.map((r) => ({ uri: r.uri, name: r.name }));
  const staticText = resources.find((r) => r.name === `${prefix}static-text` || r.name === 'static-text'
    || r.uri.endsWith('test://static-text'));
  if (!staticText) throw new Error(`resources/list: no static-text resource in ${JSON.stringify(out.resources)}`);
  out.readUri = staticText.uri;
  out.read = await step('resources/read', () => client.readResource({ uri: staticText.uri }));

  out.sampling = await step('tools/call test_sampling', () => client.callTool(
    { name: `${prefix}test_sampling`, arguments: { prompt: 'What is the capital of France?' } }));
  out.elicitation = await step('tools/call test_elicitation', () => client.callTool(
    { name: `${prefix}test_elicitation`, arguments: { message: 'Who are you?' } }));
  out.samplingRequests = sampling;
  out.elicitationRequests = elicitation;

  await step('DELETE', () => transport.terminateSession());
  out.sessionAfterDelete = transport.sessionId ?? null;
  out.http = http;
  await client.close();
  console.log(JSON.stringify(out));
} catch (e) {
  out.http = http;
  console.error(`ts_client: ${e?.message ?? e}\n${JSON.stringify(out)}`);
  process.exit(1);
}
