// WhatsSound rooms, audio sync: only the room's host publishes `playback`
// on `room:<id>:audio` (host set through the admin API or a `room_host`
// JWT claim), the latest playback is retained and sent to each joiner right
// after its join reply, and the `clock` event lets clients agree on the
// playback position.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import {
  RawClient,
  REALTIME_KINDS,
} from './lib/clients.mjs';
import {
  assertHealthy,
  closeAll,
  realtime,
  recordingChannel,
  signJwt,
  startNode,
  subscribe,
  uid,
  VSNS,
  waitFor,
  within,
} from './lib/node.mjs';

let node;
before(async () => {
  node = await startNode();
});
after(async () => {
  await closeAll();
  await node?.stop();
});

async function putRoom(n, id, body, headers = {}) {
  const res = await fetch(`${n.http}/realtime/v1/api/rooms/${encodeURIComponent(id)}`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json', apikey: 'anon', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
  return { status: res.status, body: await res.json() };
}

async function getRoom(n, id, headers = {}) {
  const res = await fetch(`${n.http}/realtime/v1/api/rooms/${encodeURIComponent(id)}`, {
    headers: { apikey: 'anon', ...headers },
    signal: AbortSignal.timeout(5000),
  });
  return { status: res.status, body: await res.json() };
}

const playback = (over = {}) => ({
  track: 'spotify:track:4uLU6hMCjMI75M1A2tKUQC',
  position_ms: 12_345,
  playing: true,
  taken_at_ms: Date.now(),
  ...over,
});

/** A raw client joined to `topic` as presence key `key`. */
async function rawJoined(n, vsn, topic, key, extra = {}, query) {
  const c = await RawClient.open(n, vsn, undefined, query);
  const r = await c.join(topic, { presence: { key, enabled: false } }, extra);
  assert.equal(r.status, 'ok', JSON.stringify(r));
  return c;
}

/** Pushes a playback broadcast (JSON form); resolves with the reply payload. */
async function rawPlayback(c, topic, payload) {
  const ref = c.push(topic, 'broadcast', { type: 'broadcast', event: 'playback', payload }, { join_ref: c.joinRefs[topic] });
  return c.reply(ref);
}

describe('admin API', () => {
  test('PUT sets the host, merged into the room state; GET returns it', async () => {
    const room = uid('r');
    assert.deepEqual(await getRoom(node, room), { status: 200, body: {} });
    assert.deepEqual(await putRoom(node, room, { host: 'alice' }), { status: 200, body: { host: 'alice' } });
    assert.deepEqual(await putRoom(node, room, { theme: 'dark' }), {
      status: 200,
      body: { host: 'alice', theme: 'dark' },
    });
    assert.deepEqual(await getRoom(node, room), { status: 200, body: { host: 'alice', theme: 'dark' } });
    assert.deepEqual(await putRoom(node, room, { host: 'bob' }), { status: 200, body: { host: 'bob', theme: 'dark' } });
  });

  test('bad bodies are refused with 400', async () => {
    const room = uid('r');
    for (const body of [{ host: 3 }, { host: '' }, [1], '{nope', { playback: { track: 1 } }]) {
      const r = await putRoom(node, room, body);
      assert.equal(r.status, 400, JSON.stringify(body));
      assert.ok(r.body.error, JSON.stringify(r.body));
    }
    assert.deepEqual((await getRoom(node, room)).body, {});
  });
});

for (const vsn of VSNS) {
  describe(`raw ${vsn}`, () => {
    test('the host set via the admin API publishes; a non-host gets not_room_host', async () => {
      const room = uid('r');
      const topic = `realtime:room:${room}:audio`;
      assert.equal((await putRoom(node, room, { host: 'alice' })).status, 200);
      const alice = await rawJoined(node, vsn, topic, 'alice', {});
      const bob = await rawJoined(node, vsn, topic, 'bob');

      const r = await rawPlayback(bob, topic, playback());
      assert.deepEqual(r, { status: 'error', response: { reason: 'not_room_host' } });

      // The host's playback reaches bob; nothing of bob's reached alice.
      const p = playback({ position_ms: 1000 });
      alice.push(topic, 'broadcast', { type: 'broadcast', event: 'playback', payload: p }, { join_ref: alice.joinRefs[topic] });
      await waitFor(() => bob.broadcasts(topic, 'playback').length === 1, 5000, 'bob gets the playback');
      assert.deepEqual(bob.broadcasts(topic, 'playback')[0].payload.payload, p);
      assert.equal(alice.broadcasts(topic, 'playback').length, 0);

      // Without a presence key nobody is host.
      const anon = await rawJoined(node, vsn, topic, '');
      assert.equal((await rawPlayback(anon, topic, playback())).response.reason, 'not_room_host');

      // The host changes through the admin API: now bob may, alice may not.
      assert.equal((await putRoom(node, room, { host: 'bob' })).status, 200);
      assert.equal((await rawPlayback(alice, topic, playback())).response.reason, 'not_room_host');
      bob.push(topic, 'broadcast', { type: 'broadcast', event: 'playback', payload: playback({ position_ms: 2 }) }, { join_ref: bob.joinRefs[topic] });
      await waitFor(() => alice.broadcasts(topic, 'playback').length === 1, 5000, 'alice gets bob\'s playback');
      await assertHealthy(node);
    });

    test('malformed playback payloads get invalid_playback errors, the room unharmed', async () => {
      const room = uid('r');
      const topic = `realtime:room:${room}:audio`;
      await putRoom(node, room, { host: 'alice' });
      const alice = await rawJoined(node, vsn, topic, 'alice');
      const bob = await rawJoined(node, vsn, topic, 'bob');
      const cases = [
        [{ track: 1, position_ms: 0, playing: true, taken_at_ms: 1 }, 'invalid_playback: track must be a string'],
        [{ track: 't', position_ms: -1, playing: true, taken_at_ms: 1 }, 'invalid_playback: position_ms must be a non-negative number'],
        [{ track: 't', position_ms: 0, playing: 'yes', taken_at_ms: 1 }, 'invalid_playback: playing must be a boolean'],
        [{ track: 't', position_ms: 0, playing: true }, 'invalid_playback: taken_at_ms is required'],
        ['play', 'invalid_playback: payload must be a JSON object'],
      ];
      for (const [payload, reason] of cases) {
        const r = await rawPlayback(alice, topic, payload);
        assert.deepEqual(r, { status: 'error', response: { reason } }, JSON.stringify(payload));
      }
      // Malformed from a non-host: validation first (no state disclosed).
      assert.equal((await rawPlayback(bob, topic, { track: 2 })).response.reason, 'invalid_playback: track must be a string');
      // Nothing was fanned out or retained; a good one still goes through.
      assert.equal(bob.broadcasts(topic, 'playback').length, 0);
      assert.equal((await getRoom(node, room)).body.playback, undefined);
      const p = playback();
      alice.push(topic, 'broadcast', { type: 'broadcast', event: 'playback', payload: p }, { join_ref: alice.joinRefs[topic] });
      await waitFor(() => bob.broadcasts(topic, 'playback').length === 1, 5000, 'good playback delivered');
      await assertHealthy(node);
    });

    test('a late joiner gets the retained playback right after its join reply', async () => {
      const room = uid('r');
      const topic = `realtime:room:${room}:audio`;
      await putRoom(node, room, { host: 'alice' });
      const alice = await rawJoined(node, vsn, topic, 'alice');
      const p1 = playback({ position_ms: 1 });
      const p2 = playback({ position_ms: 2, playing: false });
      for (const p of [p1, p2]) {
        alice.push(topic, 'broadcast', { type: 'broadcast', event: 'playback', payload: p }, { join_ref: alice.joinRefs[topic] });
      }
      await waitFor(async () => (await getRoom(node, room)).body.playback?.position_ms === 2, 5000, 'stored playback');

      const late = await RawClient.open(node, vsn);
      const ref = late.nextRef();
      late.push(topic, 'phx_join', { config: { presence: { key: 'zoe' } } }, { join_ref: ref, ref });
      await waitFor(() => late.broadcasts(topic, 'playback').length === 1, 5000, 'retained playback');
      const i = late.messages.findIndex((m) => m.event === 'phx_reply' && m.ref === ref);
      assert.equal(late.messages[i].payload.status, 'ok');
      const next = late.messages[i + 1];
      assert.equal(next.event, 'broadcast');
      assert.deepEqual(next.payload, { type: 'broadcast', event: 'playback', payload: p2, meta: { retained: true } });
    });

    test('clock: on the phoenix topic and on a joined room topic; bad t0 refused', async () => {
      const room = uid('r');
      const topic = `realtime:room:${room}:chat`;
      const c = await rawJoined(node, vsn, topic, 'u');
      for (const t of ['phoenix', topic]) {
        const t0 = Date.now();
        const r = await c.reply(c.push(t, 'clock', { t0 }));
        const t3 = Date.now();
        assert.equal(r.status, 'ok');
        const { server_receive_ms: t1, server_send_ms: t2 } = r.response;
        assert.equal(r.response.t0, t0);
        assert.ok(typeof t1 === 'number' && typeof t2 === 'number');
        assert.ok(t1 <= t2, `${t1} <= ${t2}`);
        // Same machine, same clock: the server's times fall inside the exchange.
        assert.ok(t0 - 1 <= t1 && t2 <= t3 + 1, `${t0} ${t1} ${t2} ${t3}`);
      }
      const bad = await c.reply(c.push('phoenix', 'clock', { t0: 'now' }));
      assert.equal(bad.status, 'error');
      assert.match(bad.response.reason, /^invalid_clock/);
      const unjoined = await c.reply(c.push('realtime:room:x:audio', 'clock', { t0: 1 }));
      assert.deepEqual(unjoined, { status: 'error', response: { reason: 'unmatched topic' } });
    });
  });
}

for (const kind of REALTIME_KINDS) {
  const vsn = kind.split('@')[1];
  describe(kind, () => {
    test('late joiner (realtime-js) receives the host\'s playback with meta.retained', async () => {
      const room = uid('r');
      await putRoom(node, room, { host: 'dj' });
      const host = realtime(node, vsn);
      const hch = host.channel(`room:${room}:audio`, { config: { broadcast: { ack: true }, presence: { key: 'dj' } } });
      await subscribe(hch);
      const p = playback();
      assert.equal(await hch.send({ type: 'broadcast', event: 'playback', payload: p }), 'ok');

      // A non-host realtime-js client with ack sees the refusal.
      const other = realtime(node, vsn);
      const och = other.channel(`room:${room}:audio`, { config: { broadcast: { ack: true }, presence: { key: 'fan' } } });
      await subscribe(och);
      assert.equal(await och.send({ type: 'broadcast', event: 'playback', payload: p }), 'error');

      const late = realtime(node, vsn);
      const ch = recordingChannel(late, `room:${room}:audio`, { presence: { key: 'late' } });
      await subscribe(ch);
      await waitFor(() => ch.got.length === 1, 5000, 'retained playback');
      assert.equal(ch.got[0].event, 'playback');
      assert.deepEqual(ch.got[0].payload, p);
      assert.deepEqual(ch.got[0].meta, { retained: true });
      assert.deepEqual((await getRoom(node, room)).body, { host: 'dj', playback: p });
    });

    test('two clients agree on the playback position within 20 ms (clock event + retained state)', async () => {
      const room = uid('r');
      await putRoom(node, room, { host: 'dj' });
      // Each client runs on its own (skewed) clock; only the clock event
      // tells it the server's time.
      const makeSide = async (key, skewMs) => {
        const client = realtime(node, vsn);
        const ch = recordingChannel(client, `room:${room}:audio`, { broadcast: { ack: true }, presence: { key } });
        await subscribe(ch);
        const localNow = () => performance.timeOrigin + performance.now() + skewMs;
        let best = null;
        for (let i = 0; i < 8; i++) {
          const t0 = localNow();
          const r = await within(
            new Promise((resolve, reject) => {
              ch.channelAdapter
                .push('clock', { t0 }, 5000)
                .receive('ok', resolve)
                .receive('error', reject)
                .receive('timeout', () => reject(new Error('clock timeout')));
            }),
            6000,
            'clock',
          );
          const t3 = localNow();
          const offset = (r.server_receive_ms - t0 + (r.server_send_ms - t3)) / 2;
          const rtt = t3 - t0 - (r.server_send_ms - r.server_receive_ms);
          if (!best || rtt < best.rtt) best = { offset, rtt };
        }
        const serverNow = () => localNow() + best.offset;
        return { ch, serverNow, skewMs, best };
      };
      const dj = await makeSide('dj', 1234);
      const p = { track: 'song-1', position_ms: 30_000, playing: true, taken_at_ms: Math.round(dj.serverNow()) };
      assert.equal(await dj.ch.send({ type: 'broadcast', event: 'playback', payload: p }), 'ok');

      const a = await makeSide('a', 5_000);
      const b = await makeSide('b', -3_000);
      for (const side of [a, b]) {
        await waitFor(() => side.ch.got.some((m) => m.meta?.retained), 5000, 'retained playback');
        // The offset estimate undoes the skew (loopback: a few ms at most).
        assert.ok(Math.abs(side.best.offset + side.skewMs) < 20, `offset ${side.best.offset} vs skew ${side.skewMs}`);
      }
      const position = (side) => {
        const s = side.ch.got.find((m) => m.meta?.retained).payload;
        return s.playing ? s.position_ms + (side.serverNow() - s.taken_at_ms) : s.position_ms;
      };
      const pa = position(a);
      const pb = position(b);
      assert.ok(Math.abs(pa - pb) <= 20, `a at ${pa} ms, b at ${pb} ms`);
      assert.ok(pa >= 30_000 && pa < 30_000 + 10_000, `position ${pa}`);
    });
  });
}

describe('JWT room_host claim', () => {
  const secret = 'audio-sync-test-secret-0123456789';
  let authNode;
  before(async () => {
    authNode = await startNode({ CHORUS_JWT_SECRET: secret });
  });
  after(async () => {
    await authNode?.stop();
  });

  test('a token claiming the room publishes; a token without the claim gets not_room_host', async () => {
    const room = uid('r');
    const topic = `realtime:room:${room}:audio`;
    const exp = Math.floor(Date.now() / 1000) + 600;
    const hostToken = signJwt({ sub: 'h', role: 'authenticated', exp, room_host: ['other', room] }, secret);
    const plainToken = signJwt({ sub: 'p', role: 'authenticated', exp }, secret);
    // Socket apikey claim.
    const h = await rawJoined(authNode, '1.0.0', topic, 'h', {}, `apikey=${hostToken}`);
    const p = await rawJoined(authNode, '1.0.0', topic, 'p', {}, `apikey=${plainToken}`);
    assert.equal((await rawPlayback(p, topic, playback())).response.reason, 'not_room_host');
    const pb = playback({ position_ms: 77 });
    h.push(topic, 'broadcast', { type: 'broadcast', event: 'playback', payload: pb }, { join_ref: h.joinRefs[topic] });
    await waitFor(() => p.broadcasts(topic, 'playback').length === 1, 5000, 'claimed host playback delivered');
    // Join access_token claim, on a socket whose apikey has none.
    // (Its presence key is the token's sub: with auth on, identity comes from the token.)
    const j = await rawJoined(authNode, '1.0.0', topic, 'h', { access_token: hostToken }, `apikey=${plainToken}`);
    j.push(topic, 'broadcast', { type: 'broadcast', event: 'playback', payload: playback({ position_ms: 88 }) }, { join_ref: j.joinRefs[topic] });
    await waitFor(() => p.broadcasts(topic, 'playback').length === 2, 5000, 'access_token host playback delivered');
    // Reading the room state is an admin route: the service key.
    const service = signJwt({ role: 'service_role', exp }, secret);
    const r = await getRoom(authNode, room, { apikey: service });
    assert.equal(r.status, 200);
    assert.equal(r.body.playback.position_ms, 88);
  });
});
