// docs/openapi.yaml is a valid OpenAPI document, names exactly the routes the
// node serves (the route table in src/admin.rs), and a live node answers
// every documented operation with a status the document lists, carrying the
// fields its schema requires.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import SwaggerParser from '@apidevtools/swagger-parser';

import { CHORUS_BIN, REPO, startNode, uid } from './lib/node.mjs';

const SPEC = path.join(REPO, 'docs/openapi.yaml');
const SECRET = 'openapi-secret';
let api;
let node;
let token;
let userToken;

before(async () => {
  api = await SwaggerParser.validate(SPEC);
  // A demo directory of our own: the routes' answers must not depend on
  // whether the demo bundle was built.
  const demo = mkdtempSync(path.join(os.tmpdir(), 'chorus-openapi-demo-'));
  writeFileSync(path.join(demo, 'index.html'), '<!doctype html><title>demo</title>');
  writeFileSync(path.join(demo, 'app.js'), 'console.log(1)');
  node = await startNode({ CHORUS_JWT_SECRET: SECRET, CHORUS_NODE_DEMO_DIR: demo });
  const gentoken = (sub, role) =>
    execFileSync(CHORUS_BIN, ['gentoken', '--sub', sub, '--role', role], {
      env: { PATH: process.env.PATH, CHORUS_JWT_SECRET: SECRET },
    })
      .toString()
      .trim();
  token = gentoken('svc', 'service_role');
  userToken = gentoken('ana', 'authenticated');
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

async function call(method, route, { path: actual, body, auth = true, as = token, headers = {} } = {}) {
  const res = await fetch(`${node.http}${actual ?? route}`, {
    method,
    headers: { ...(auth ? { Authorization: `Bearer ${as}` } : {}), ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}), ...headers },
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    redirect: 'manual',
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

/**
 * A WebSocket upgrade request without a token, over a raw socket (fetch
 * refuses `Connection: Upgrade`); checks the answer against the document like
 * `call` and returns its status.
 */
function upgrade(route, actual) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(node.port, '127.0.0.1');
    let raw = '';
    sock.setTimeout(10000, () => sock.destroy(new Error('no answer to the upgrade')));
    sock.on('error', reject);
    sock.on('data', (d) => (raw += d.toString()));
    sock.on('close', () => {
      try {
        const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(raw)?.[1]);
        const doc = api.paths[route].get.responses[String(status)];
        assert.ok(doc, `GET ${actual} answered ${JSON.stringify(raw.slice(0, 200))}, not listed in the document`);
        const json = doc.content?.['application/json'];
        const body = raw.slice(raw.indexOf('\r\n\r\n') + 4);
        if (json) checkRequired(json.schema, JSON.parse(body), `GET ${route} ${status}`);
        resolve(status);
      } catch (e) {
        reject(e);
      }
    });
    sock.write(
      `GET ${actual} HTTP/1.1\r\nHost: 127.0.0.1:${node.port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
        'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
    );
  });
}

test('a live node answers every operation as documented', async () => {
  const room = uid('api');
  const topic = `room:${room}:chat`;
  assert.equal(await call('GET', '/healthz', { auth: false }), 200);
  assert.equal(await call('GET', '/readyz', { auth: false }), 200);
  assert.equal(await call('POST', '/realtime/v1/api/drain', { auth: false }), 401);
  assert.equal(await call('POST', '/realtime/v1/api/drain', { as: userToken }), 403);
  assert.equal(await call('GET', '/metrics', { auth: false }), 200);
  assert.equal(await call('GET', '/dashboard', { auth: false }), 200);
  assert.equal(await call('GET', '/dashboard/stats', { auth: false }), 401);
  assert.equal(await call('GET', '/dashboard/stats'), 200);
  // A user's token is not an operator's: the admin routes answer 403.
  assert.equal(await call('GET', '/dashboard/stats', { as: userToken }), 403);
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
  assert.equal(await call('GET', rooms, { path: `/realtime/v1/api/rooms/${room}`, as: userToken }), 403);
  const modules = '/realtime/v1/api/modules';
  assert.equal(await call('GET', modules), 200);
  assert.equal(await call('GET', modules, { auth: false }), 401);
  assert.equal(await call('POST', `${modules}/reload`), 200);
  assert.equal(await call('POST', `${modules}/reload`, { auth: false }), 401);
  assert.equal(await call('POST', `${modules}/reload`, { as: userToken }), 403);
  assert.equal(await call('GET', '/demo', { auth: false }), 301);
  assert.equal(await call('GET', '/demo/', { auth: false }), 200);
  assert.equal(await call('GET', '/demo/{file}', { path: '/demo/app.js', auth: false }), 200);
  assert.equal(await call('GET', '/demo/{file}', { path: '/demo/missing.js', auth: false }), 404);
  const ws = '/realtime/v1/websocket';
  assert.equal(await call('GET', ws, { path: `${ws}?vsn=9.9.9`, auth: false }), 400);
  assert.equal(await upgrade(ws, `${ws}?vsn=2.0.0`), 401);
  // Last: the operator's drain ends this node.
  assert.equal(await call('POST', '/realtime/v1/api/drain'), 202);
});
