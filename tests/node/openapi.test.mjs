// docs/openapi.yaml is a valid OpenAPI document, names exactly the routes the
// node serves (the route table in src/admin.rs), and a live node answers
// every documented operation with a status the document lists, carrying the
// fields its schema requires.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import SwaggerParser from '@apidevtools/swagger-parser';

import { CHORUS_BIN, REPO, startNode, uid } from './lib/node.mjs';

const SPEC = path.join(REPO, 'docs/openapi.yaml');
const SECRET = 'openapi-secret';
let api;
let node;
let token;

before(async () => {
  api = await SwaggerParser.validate(SPEC);
  node = await startNode({ CHORUS_JWT_SECRET: SECRET });
  token = execFileSync(CHORUS_BIN, ['gentoken', '--sub', 'svc', '--role', 'service_role'], {
    env: { PATH: process.env.PATH, CHORUS_JWT_SECRET: SECRET },
  })
    .toString()
    .trim();
});
after(async () => {
  await node?.stop();
});

/** `GET /realtime/v1/api/rooms/<id>` rows of the route table in src/admin.rs. */
function servedRoutes() {
  const text = readFileSync(path.join(REPO, 'src/admin.rs'), 'utf8');
  const routes = new Set();
  for (const m of text.matchAll(/^\/\/! \| `([A-Z]+) ([^`?]+)(\?[^`]*)?` \|/gm)) {
    routes.add(`${m[1]} ${m[2].replace(/<([a-z]+)>/g, '{$1}')}`);
  }
  return routes;
}

test('the document is valid OpenAPI and lists exactly the served routes', () => {
  assert.match(api.openapi, /^3\./);
  const documented = new Set();
  for (const [p, item] of Object.entries(api.paths)) {
    for (const method of ['get', 'put', 'post', 'delete', 'patch']) {
      if (item[method]) documented.add(`${method.toUpperCase()} ${p}`);
    }
  }
  const served = servedRoutes();
  assert.ok(served.size >= 10, `route table read: ${[...served]}`);
  for (const r of served) assert.ok(documented.has(r), `${r} is served but not in docs/openapi.yaml`);
  for (const r of documented) {
    if (r.endsWith('/websocket')) continue; // the upgrade, served by the gateway
    assert.ok(served.has(r), `${r} is documented but not in src/admin.rs' route table`);
  }
});

/** Checks `body` against the `required` keys of `schema`, recursively. */
function checkRequired(schema, body, where) {
  if (!schema || typeof body !== 'object' || body === null) return;
  for (const key of schema.required ?? []) assert.ok(key in body, `${where}: missing ${key}`);
  for (const [key, sub] of Object.entries(schema.properties ?? {})) {
    if (key in body) checkRequired(sub, body[key], `${where}.${key}`);
  }
  if (schema.items && Array.isArray(body)) body.forEach((b, i) => checkRequired(schema.items, b, `${where}[${i}]`));
}

async function call(method, route, { path: actual, body, auth = true, headers = {} } = {}) {
  const res = await fetch(`${node.http}${actual ?? route}`, {
    method,
    headers: { ...(auth ? { Authorization: `Bearer ${token}` } : {}), ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}), ...headers },
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    signal: AbortSignal.timeout(10000),
  });
  const op = api.paths[route]?.[method.toLowerCase()];
  assert.ok(op, `${method} ${route} is documented`);
  const doc = op.responses[String(res.status)];
  const text = await res.text();
  assert.ok(doc, `${method} ${actual ?? route} answered ${res.status}, not listed in the document: ${text}`);
  const json = doc.content?.['application/json'];
  if (json) checkRequired(json.schema, JSON.parse(text), `${method} ${route} ${res.status}`);
  return res.status;
}

test('a live node answers every operation as documented', async () => {
  const room = uid('api');
  const topic = `room:${room}:chat`;
  assert.equal(await call('GET', '/healthz', { auth: false }), 200);
  assert.equal(await call('GET', '/metrics', { auth: false }), 200);
  assert.equal(await call('GET', '/dashboard', { auth: false }), 200);
  assert.equal(await call('GET', '/dashboard/stats', { auth: false }), 401);
  assert.equal(await call('GET', '/dashboard/stats'), 200);
  const batch = '/realtime/v1/api/broadcast';
  assert.equal(await call('POST', batch, { body: { messages: [{ topic, event: 'm', payload: { a: 1 } }] } }), 202);
  assert.equal(await call('POST', batch, { body: { messages: [{ event: 'no topic' }] } }), 400);
  assert.equal(await call('POST', batch, { body: '{not json' }), 400);
  assert.equal(await call('POST', batch, { body: { messages: [] }, auth: false }), 401);
  const one = '/realtime/v1/api/broadcast/{topic}/events/{event}';
  assert.equal(await call('POST', one, { path: `/realtime/v1/api/broadcast/${topic}/events/m`, body: { b: 2 } }), 202);
  const online = '/realtime/v1/api/presence/online';
  assert.equal(await call('GET', online, { path: `${online}?keys=alice,bob` }), 200);
  const history = '/realtime/v1/api/channels/{topic}/messages';
  assert.equal(await call('GET', history, { path: `/realtime/v1/api/channels/${topic}/messages?limit=5` }), 200);
  assert.equal(await call('GET', history, { path: `/realtime/v1/api/channels/${topic}/messages?limit=0` }), 400);
  assert.equal(await call('GET', history, { path: `/realtime/v1/api/channels/${topic}/messages?before=x` }), 400);
  const rooms = '/realtime/v1/api/rooms/{id}';
  assert.equal(await call('GET', rooms, { path: `/realtime/v1/api/rooms/${room}` }), 200);
  assert.equal(await call('PUT', rooms, { path: `/realtime/v1/api/rooms/${room}`, body: { host: 'alice' } }), 200);
  assert.equal(await call('PUT', rooms, { path: `/realtime/v1/api/rooms/${room}`, body: '[1,2' }), 400);
  const ws = '/realtime/v1/websocket';
  assert.equal(await call('GET', ws, { path: `${ws}?vsn=9.9.9`, auth: false }), 400);
  assert.equal(await call('GET', ws, { path: `${ws}?vsn=2.0.0`, auth: false, headers: { Connection: 'Upgrade', Upgrade: 'websocket' } }), 401);
});
