// Who may call the admin routes when auth is on (issue 11, item 1): the room
// state, REST broadcasts to protected topics and the history of private
// topics need `role: service_role`; the public anon key and ordinary users
// get 403 with the reason. A join binding postgres_changes is refused with a
// reason instead of an ok that would never deliver a change.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { closeAll, realtime, signJwt, startNode, subscribe, uid, waitFor, within } from './lib/node.mjs';

const SECRET = 'chorus-roles-test-secret-0123456789';
const now = () => Math.floor(Date.now() / 1000);
const token = (claims) => signJwt({ exp: now() + 3600, ...claims }, SECRET);
const ANON = token({ role: 'anon' });
const MALLORY = token({ sub: 'mallory', role: 'authenticated' });
const SERVICE = token({ role: 'service_role' });

// Rooms are private: members are listed in the `rooms` claim.
const POLICIES = [
  { name: 'room members', topic: 'room:{id}:*', actions: ['join', 'send', 'track'], claims: { rooms: '{id}' } },
];

let node;
before(async () => {
  node = await startNode({
    CHORUS_JWT_SECRET: SECRET,
    CHORUS_AUTH_POLICIES: JSON.stringify(POLICIES),
    CHORUS_LIMITS_ROOM_STATE_BYTES: '2048',
  });
});
after(async () => {
  await closeAll();
  await node?.stop();
});

async function call(method, path, key, body) {
  const res = await fetch(`${node.http}${path}`, {
    method,
    headers: { apikey: key, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {}
  return { status: res.status, json, text };
}

describe('room state is an admin route', () => {
  test('the anon key cannot set a room host: 403 naming service_role', async () => {
    const room = uid('r');
    const r = await call('PUT', `/realtime/v1/api/rooms/${room}`, ANON, { host: 'anyone' });
    assert.equal(r.status, 403, r.text);
    assert.match(r.json.error, /service_role/);
    assert.match(r.json.error, /"anon"/);
    const state = await call('GET', `/realtime/v1/api/rooms/${room}`, SERVICE);
    assert.equal(state.status, 200);
    assert.deepEqual(state.json, {}, 'nothing was written');
  });

  test('a user cannot make herself host; the service key can set the host', async () => {
    const room = uid('r');
    const bad = await call('PUT', `/realtime/v1/api/rooms/${room}`, MALLORY, { host: 'mallory' });
    assert.equal(bad.status, 403, bad.text);
    assert.match(bad.json.error, /"authenticated"/);
    const ok = await call('PUT', `/realtime/v1/api/rooms/${room}`, SERVICE, { host: 'alice' });
    assert.equal(ok.status, 200, ok.text);
    assert.equal(ok.json.host, 'alice');
    // Reading the state is admin-only too.
    assert.equal((await call('GET', `/realtime/v1/api/rooms/${room}`, MALLORY)).status, 403);
    assert.equal((await call('GET', `/realtime/v1/api/rooms/${room}`, SERVICE)).json.host, 'alice');
  });
});

describe('REST broadcast to protected topics', () => {
  test('anon to a policy-covered topic, to a private-marked message or to an audio lane: 403, nothing delivered', async () => {
    const listener = realtime(node, '2.0.0', { apikey: ANON });
    const pub = listener.channel(uid('open'));
    const got = [];
    pub.on('broadcast', { event: '*' }, (m) => got.push(m.payload));
    await subscribe(pub);
    const room = uid('r');
    for (const messages of [
      [{ topic: `room:${room}:chat`, event: 'm', payload: { n: 1 } }],
      [{ topic: `room:${room}:audio`, event: 'playback', payload: { n: 2 } }],
      [{ topic: pub.subTopic, event: 'm', payload: { n: 3 }, private: true }],
      // One protected message refuses the whole batch, public ones included.
      [{ topic: pub.subTopic, event: 'm', payload: { n: 4 } }, { topic: `room:${room}:chat`, event: 'm', payload: {} }],
    ]) {
      const r = await call('POST', '/realtime/v1/api/broadcast', ANON, { messages });
      assert.equal(r.status, 403, `${JSON.stringify(messages)}: ${r.text}`);
      assert.match(r.json.error, /service_role/);
      assert.match(r.json.error, /protected topic/);
    }
    // A public topic stays open to any valid token.
    const ok = await call('POST', '/realtime/v1/api/broadcast', ANON, {
      messages: [{ topic: pub.subTopic, event: 'm', payload: { n: 5 } }],
    });
    assert.equal(ok.status, 202, ok.text);
    await waitFor(() => got.length === 1, 5000, 'the public broadcast');
    await new Promise((r) => setTimeout(r, 200));
    assert.deepEqual(got, [{ n: 5 }], 'no refused message was delivered');
  });

  test('realtime-js httpSend to an audio lane is refused for anon with the reason, accepted for service_role', async () => {
    const room = uid('r');
    const anon = realtime(node, '2.0.0', { apikey: ANON });
    await assert.rejects(
      within(anon.channel(`room:${room}:audio`).httpSend('playback', { track: 't' }), 5000, 'httpSend'),
      /service_role/,
    );
    const service = realtime(node, '2.0.0', { apikey: SERVICE });
    assert.deepEqual(await service.channel(`room:${room}:audio`).httpSend('playback', { track: 't' }), { success: true });
  });
});

describe('history of private topics', () => {
  test('anon gets 403 on a policy-covered topic and 200 on a public one; service_role reads both', async () => {
    const room = uid('r');
    const priv = `/realtime/v1/api/channels/${encodeURIComponent(`room:${room}:chat`)}/messages`;
    const pub = `/realtime/v1/api/channels/${encodeURIComponent(uid('lobby'))}/messages`;
    const refused = await call('GET', priv, ANON);
    assert.equal(refused.status, 403, refused.text);
    assert.match(refused.json.error, /history of private topic/);
    assert.equal((await call('GET', priv, MALLORY)).status, 403);
    assert.equal((await call('GET', priv, SERVICE)).status, 200);
    assert.equal((await call('GET', pub, ANON)).status, 200);
    assert.equal((await call('GET', pub, SERVICE)).status, 200);
  });
});

describe('postgres_changes', () => {
  for (const vsn of ['1.0.0', '2.0.0']) {
    test(`realtime-js ${vsn}: a postgres_changes binding gets CHANNEL_ERROR with the reason`, async () => {
      const c = realtime(node, vsn, { apikey: ANON });
      const ch = c.channel(uid('pg'));
      ch.on('postgres_changes', { event: '*', schema: 'public', table: 'messages' }, () => {});
      const result = await within(
        new Promise((resolve) => ch.subscribe((status, err) => status !== 'SUBSCRIBED' && resolve({ status, err }))),
        5000,
        'subscribe result',
      );
      assert.equal(result.status, 'CHANNEL_ERROR');
      assert.match(result.err.message, /postgres_changes is not supported/);
      // Without bindings the same client joins.
      await subscribe(c.channel(uid('plain')));
    });
  }
});

describe('room state budget', () => {
  test('a state over limits.room_state_bytes is refused with 413 naming the key, in one patch or several', async () => {
    const room = uid('r');
    const path = `/realtime/v1/api/rooms/${room}`;
    const big = await call('PUT', path, SERVICE, { host: 'a', note: 'x'.repeat(3000) });
    assert.equal(big.status, 413, big.text);
    assert.match(big.json.error, /limits\.room_state_bytes/);
    assert.equal((await call('PUT', path, SERVICE, { a: 'y'.repeat(1200) })).status, 200);
    const grown = await call('PUT', path, SERVICE, { b: 'z'.repeat(1200) });
    assert.equal(grown.status, 413, grown.text);
    assert.match(grown.json.error, /room state would be \d+ bytes/);
    const state = await call('GET', path, SERVICE);
    assert.deepEqual(Object.keys(state.json), ['a'], 'the refused patch changed nothing');
  });
});
