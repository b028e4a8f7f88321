// JWT auth on a node with CHORUS_JWT_SECRET: a valid HS256 apikey connects,
// invalid / expired / unsigned ones are refused at the handshake with a
// reason, a join with an invalid access_token gets an error reply, a token
// refresh with an expired token closes the channel, REST needs a token.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { RawClient, VSNS, WebSocket, closeAll, realtime, signJwt, startNode, subscribe, uid, waitFor, within } from './lib/node.mjs';

const SECRET = 'chorus-test-secret-with-some-length';
const now = () => Math.floor(Date.now() / 1000);
const valid = (extra = {}) => signJwt({ sub: 'user-1', role: 'authenticated', exp: now() + 3600, ...extra }, SECRET);
const expired = () => signJwt({ sub: 'user-1', exp: now() - 60 }, SECRET);
const wrongKey = () => signJwt({ sub: 'user-1', exp: now() + 3600 }, 'another-secret');
const unsigned = () => {
  const b = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${b({ alg: 'none', typ: 'JWT' })}.${b({ sub: 'user-1', exp: now() + 3600 })}.`;
};

let node;
before(async () => {
  node = await startNode({ CHORUS_JWT_SECRET: SECRET });
});
after(async () => {
  await closeAll();
  await node?.stop();
});

/** Tries a WebSocket handshake; resolves {open: true} or {status, body}. */
function handshake(query) {
  return within(
    new Promise((resolve) => {
      const ws = new WebSocket(`ws://127.0.0.1:${node.port}/realtime/v1/websocket?${query}`);
      ws.on('open', () => {
        ws.terminate();
        resolve({ open: true });
      });
      ws.on('unexpected-response', (_req, res) => {
        let body = '';
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode, body }));
      });
      ws.on('error', (e) => resolve({ error: e.message }));
    }),
    5000,
    'handshake',
  );
}

describe('socket apikey', () => {
  for (const vsn of VSNS) {
    test(`realtime-js ${vsn} with a valid HS256 apikey connects, joins and broadcasts`, async () => {
      const key = valid();
      const a = realtime(node, vsn, { apikey: key });
      const b = realtime(node, vsn, { apikey: key });
      const topic = uid('auth');
      const ca = a.channel(topic, { config: { broadcast: { ack: true } } });
      const cb = b.channel(topic);
      const got = [];
      cb.on('broadcast', { event: '*' }, (m) => got.push(m.payload));
      await subscribe(ca);
      await subscribe(cb);
      assert.equal(await ca.send({ type: 'broadcast', event: 'e', payload: { ok: true } }), 'ok');
      await waitFor(() => got.length === 1, 5000, 'broadcast');
      assert.deepEqual(got, [{ ok: true }]);
    });
  }

  const refused = [
    ['an expired apikey', () => expired(), /expired|exp/i],
    ['an apikey signed with another secret', () => wrongKey(), /signature|invalid/i],
    ['an unsigned (alg none) apikey', () => unsigned(), /alg|invalid/i],
    ['a garbage apikey', () => 'not-a-jwt', /invalid/i],
  ];
  for (const [what, token, reason] of refused) {
    test(`${what} is refused at the handshake with 401 and a reason`, async () => {
      const r = await handshake(`apikey=${encodeURIComponent(token())}&vsn=2.0.0`);
      assert.equal(r.status, 401, JSON.stringify(r));
      const body = JSON.parse(r.body);
      assert.match(body.error, /invalid apikey/);
      assert.match(body.error, reason);
    });
  }

  test('a missing apikey is refused with 401', async () => {
    const r = await handshake('vsn=1.0.0');
    assert.equal(r.status, 401);
    assert.match(JSON.parse(r.body).error, /missing apikey/);
  });

  test('the apikey may come as an x-api-key header', async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${node.port}/realtime/v1/websocket?vsn=1.0.0`, {
      headers: { 'x-api-key': valid() },
    });
    await within(new Promise((resolve, reject) => {
      ws.on('open', resolve);
      ws.on('error', reject);
    }), 5000, 'open');
    ws.terminate();
  });

  test('realtime-js with an expired apikey never subscribes', async () => {
    const c = realtime(node, '2.0.0', { apikey: expired(), reconnectAfterMs: () => 60000 });
    const errors = [];
    c.socketAdapter.onError((e) => errors.push(e));
    const ch = c.channel(uid('refused'));
    const statuses = [];
    ch.subscribe((s) => statuses.push(s));
    await waitFor(() => errors.length >= 1, 5000, 'socket error on the refused handshake');
    assert.ok(!statuses.includes('SUBSCRIBED'));
    assert.equal(c.isConnected(), false);
  });
});

describe('channel access_token', () => {
  for (const vsn of VSNS) {
    test(`raw ${vsn}: a join with an invalid access_token gets an error reply; a valid one joins`, async () => {
      const raw = await RawClient.open(node, vsn, '/realtime/v1/websocket', `apikey=${valid()}`);
      const bad = await raw.join(`realtime:${uid('tok')}`, {}, { access_token: wrongKey() });
      assert.equal(bad.status, 'error');
      assert.match(bad.response.reason, /invalid access token/);
      const exp = await raw.join(`realtime:${uid('tok')}`, {}, { access_token: expired() });
      assert.equal(exp.status, 'error');
      assert.match(exp.response.reason, /invalid access token.*(expired|exp)/i);
      const good = await raw.join(`realtime:${uid('tok')}`, {}, { access_token: valid() });
      assert.deepEqual(good, { status: 'ok', response: { postgres_changes: [] } });
    });

    test(`realtime-js ${vsn}: setAuth(invalid token) makes subscribe report CHANNEL_ERROR with the reason`, async () => {
      const c = realtime(node, vsn, { apikey: valid() });
      await c.setAuth(wrongKey());
      const ch = c.channel(uid('tok'));
      const result = await within(
        new Promise((resolve) => ch.subscribe((status, err) => status !== 'SUBSCRIBED' && resolve({ status, err })) ),
        5000,
        'subscribe result',
      );
      assert.equal(result.status, 'CHANNEL_ERROR');
      assert.match(result.err.message, /invalid access token/);
    });

    test(`raw ${vsn}: refreshing with an expired access_token closes the channel with a system error`, async () => {
      const raw = await RawClient.open(node, vsn, '/realtime/v1/websocket', `apikey=${valid()}`);
      const topic = `realtime:${uid('refresh')}`;
      assert.equal((await raw.join(topic, {}, { access_token: valid() })).status, 'ok');
      const joinRef = raw.joinRefs[topic];
      // A refresh is the same user's token with a later expiry.
      const okRef = raw.push(topic, 'access_token', { access_token: valid({ exp: now() + 7200 }) }, { join_ref: joinRef });
      assert.equal((await raw.reply(okRef)).status, 'ok');
      raw.push(topic, 'access_token', { access_token: expired() }, { join_ref: joinRef });
      const sys = await raw.waitMessage((m) => m.event === 'system' && m.topic === topic, 5000, 'system error');
      assert.equal(sys.payload.status, 'error');
      assert.equal(sys.payload.extension, 'system');
      assert.match(sys.payload.message, /invalid access token/);
      const close = await raw.waitMessage((m) => m.event === 'phx_close' && m.topic === topic, 5000, 'phx_close');
      assert.equal(close.ref, joinRef);
    });
  }
});

describe('REST with auth', () => {
  const body = (topic) => JSON.stringify({ messages: [{ topic, event: 'e', payload: { n: 1 } }] });

  test('no token: 401; an invalid token: 401; a valid Bearer token: 202 and delivered', async () => {
    const name = uid('rest-auth');
    const c = realtime(node, '1.0.0', { apikey: valid() });
    const ch = c.channel(name);
    const got = [];
    ch.on('broadcast', { event: '*' }, (m) => got.push(m.payload));
    await subscribe(ch);

    const post = (headers) =>
      fetch(`${node.http}/realtime/v1/api/broadcast`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...headers },
        body: body(name),
      });
    const none = await post({});
    assert.equal(none.status, 401);
    assert.match((await none.json()).error, /missing/);
    const bad = await post({ authorization: `Bearer ${expired()}` });
    assert.equal(bad.status, 401);
    const ok = await post({ authorization: `Bearer ${valid()}` });
    assert.equal(ok.status, 202);
    await waitFor(() => got.length === 1, 5000, 'REST message');
    assert.deepEqual(got, [{ n: 1 }]);
    // /healthz stays open.
    assert.equal((await fetch(`${node.http}/healthz`)).status, 200);
  });

  test('realtime-js httpSend with a valid apikey is accepted (202)', async () => {
    const name = uid('rest-auth');
    const listener = realtime(node, '2.0.0', { apikey: valid() });
    const lch = listener.channel(name);
    const got = [];
    lch.on('broadcast', { event: '*' }, (m) => got.push(m.payload));
    await subscribe(lch);
    const sender = realtime(node, '2.0.0', { apikey: valid() });
    assert.deepEqual(await sender.channel(name).httpSend('e', { via: 'httpSend' }), { success: true });
    await waitFor(() => got.length === 1, 5000, 'httpSend message');
    assert.deepEqual(got, [{ via: 'httpSend' }]);
  });
});
