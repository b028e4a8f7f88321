// WhatsSound rooms, presence (docs/ROOMS.md, "Presence shards and selective
// presence"): selective subscriptions with realtime-js and raw frames, the
// subscription cap, relevant sets and presence_count in a large room (host,
// friends from the JWT claim and the join config, recent chatters, a sample),
// back to plain presence when the room shrinks, the green dot query, and
// malformed payloads answered with errors while other clients are unharmed.
//
// The node runs with a large-room threshold of 5 present keys, relevant sets
// of 3, at most 4 subscribed keys, and JWT auth (every socket's apikey is a
// signed token, some with a `friends` claim).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { RawClient, VSNS, assertHealthy, closeAll, realtime, signJwt, startNode, subscribe, uid, waitFor, within } from './lib/node.mjs';
import { phoenix, phoenixJoin, phoenixPush } from './lib/node.mjs';
import { Presence as PhoenixPresence } from 'phoenix';

const SECRET = 'rooms-presence-test-secret-0123456789';
const THRESHOLD = 5;
const SET_SIZE = 3;
const CAP = 4;
const CAP_ERROR = `presence_subscription_cap: at most ${CAP} keys (presence.max_subscribed_keys)`;

const token = (sub, extra = {}) =>
  signJwt({ sub, role: 'authenticated', exp: Math.floor(Date.now() / 1000) + 3600, ...extra }, SECRET);

let node;
before(async () => {
  node = await startNode({
    CHORUS_JWT_SECRET: SECRET,
    CHORUS_PRESENCE_LARGE_ROOM_THRESHOLD: String(THRESHOLD),
    CHORUS_PRESENCE_RELEVANT_SET_SIZE: String(SET_SIZE),
    CHORUS_PRESENCE_MAX_SUBSCRIBED_KEYS: String(CAP),
  });
});
after(async () => {
  await closeAll();
  await node?.stop();
});

// ------------------------------------------------------------ raw helpers

/** A raw 1.0.0 client joined to `topic` (presence key `key`). */
async function rawJoined(topic, key, { enabled = false, friends, claims = {}, ack = false } = {}) {
  const c = await RawClient.open(node, '1.0.0', '/realtime/v1/websocket', `apikey=${token(key, claims)}`);
  const presence = { key, enabled, ...(friends ? { friends } : {}) };
  const r = await c.join(topic, { presence, broadcast: { ack, self: false } });
  assert.equal(r.status, 'ok', JSON.stringify(r));
  return c;
}

/** Pushes `event` on the client's joined `topic`; resolves with the reply payload. */
async function rawPush(c, topic, event, payload) {
  const ref = c.push(topic, event, payload, { join_ref: c.joinRefs[topic] });
  return c.reply(ref);
}

async function rawTrack(c, topic, meta) {
  const r = await rawPush(c, topic, 'presence', { type: 'presence', event: 'track', payload: meta });
  assert.equal(r.status, 'ok', JSON.stringify(r));
}

async function rawUntrack(c, topic) {
  const r = await rawPush(c, topic, 'presence', { type: 'presence', event: 'untrack' });
  assert.equal(r.status, 'ok', JSON.stringify(r));
}

/** A raw member that joined `topic` and tracks `{name: key}`. */
async function member(topic, key, opts = {}) {
  const c = await rawJoined(topic, key, opts);
  await rawTrack(c, topic, { name: key });
  return c;
}

/** The presence view a raw client built from its frames: key → sorted metas' `name`/`v`. */
function view(c, topic) {
  const state = {};
  for (const m of c.messages) {
    if (m.topic !== topic) continue;
    if (m.event === 'presence_state') {
      for (const k of Object.keys(state)) delete state[k];
      for (const [k, { metas }] of Object.entries(m.payload)) state[k] = [...metas];
    } else if (m.event === 'presence_diff') {
      for (const [k, { metas }] of Object.entries(m.payload.leaves)) {
        const refs = new Set(metas.map((x) => x.phx_ref));
        state[k] = (state[k] || []).filter((x) => !refs.has(x.phx_ref));
        if (state[k].length === 0) delete state[k];
      }
      for (const [k, { metas }] of Object.entries(m.payload.joins)) state[k] = [...(state[k] || []), ...metas];
    }
  }
  return state;
}

const keysOf = (obj) => Object.keys(obj).sort();

/** Keys named in the presence_diff frames a raw client got from index `from` on. */
function diffKeys(c, topic, from = 0) {
  const keys = new Set();
  for (const m of c.messages.slice(from)) {
    if (m.topic === topic && m.event === 'presence_diff') {
      for (const k of [...Object.keys(m.payload.joins), ...Object.keys(m.payload.leaves)]) keys.add(k);
    }
  }
  return [...keys].sort();
}

const frames = (c, topic, event) => c.messages.filter((m) => m.topic === topic && m.event === event);

async function waitKeys(what, get, expected, ms = 5000) {
  await waitFor(() => JSON.stringify(keysOf(get())) === JSON.stringify(expected), ms, `${what}: ${expected}`).catch((e) => {
    throw new Error(`${e.message}; has ${JSON.stringify(keysOf(get()))}`);
  });
}

async function putRoom(id, body) {
  const res = await fetch(`${node.http}/realtime/v1/api/rooms/${encodeURIComponent(id)}`, {
    method: 'PUT',
    // Setting the room host is an admin route: the service key.
    headers: { 'content-type': 'application/json', apikey: token('admin', { role: 'service_role' }) },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
  assert.equal(res.status, 200, await res.text());
}

// ------------------------------------------------------------ realtime-js helpers

/** A realtime-js channel with presence on (key `key`), recording presence_count pushes. */
async function realtimeWatcher(vsn, topic, key, { friends, claims = {} } = {}) {
  const client = realtime(node, vsn, { apikey: token(key, claims) });
  const presence = { key, ...(friends ? { friends } : {}) };
  const ch = client.channel(topic, { config: { presence } });
  ch.counts = [];
  ch.on('presence', { event: 'sync' }, () => {});
  ch.on('presence_count', {}, (p) => ch.counts.push(p.count));
  await subscribe(ch);
  return ch;
}

/** realtime-js has no public method for custom pushes: the channel adapter's push. */
function rtPush(ch, event, payload) {
  return within(
    new Promise((resolve) => {
      ch.channelAdapter
        .push(event, payload, 5000)
        .receive('ok', (r) => resolve(['ok', r]))
        .receive('error', (r) => resolve(['error', r]))
        .receive('timeout', () => resolve(['timeout', null]));
    }),
    6000,
    `push ${event}`,
  );
}

// ------------------------------------------------------------ tests

describe('selective presence', () => {
  for (const vsn of VSNS) {
    test(`realtime-js ${vsn}: presence_subscribe narrows the view; add/remove arrive as diffs; the cap is refused`, async () => {
      const topic = uid('sel');
      const wire = `realtime:${topic}`;
      const a = await member(wire, 'a');
      const b = await member(wire, 'b');
      const c = await member(wire, 'c');
      const w = await realtimeWatcher(vsn, topic, 'w');
      await waitKeys('full state at join', () => w.presenceState(), ['a', 'b', 'c']);

      // First subscription: presence_state with only the subscribed keys present.
      assert.deepEqual(await rtPush(w, 'presence_subscribe', { add: ['a', 'b', 'x'] }), ['ok', { keys: 3 }]);
      await waitKeys('state after the first subscribe', () => w.presenceState(), ['a', 'b']);

      // Only subscribed keys' diffs arrive: c's update is not seen, a's is.
      await rawTrack(c, wire, { name: 'c', v: 2 });
      await rawTrack(a, wire, { name: 'a', v: 2 });
      await waitFor(() => w.presenceState().a?.[0]?.v === 2, 5000, "a's update");
      assert.deepEqual(keysOf(w.presenceState()), ['a', 'b']);

      // Later add/remove arrive as a diff: joins for c, leaves for a.
      assert.deepEqual(await rtPush(w, 'presence_subscribe', { add: ['c'], remove: ['a'] }), ['ok', { keys: 3 }]);
      await waitKeys('after add c / remove a', () => w.presenceState(), ['b', 'c']);
      assert.equal(w.presenceState().c[0].v, 2);

      // Over the cap (3 + 2 = 5 > 4): refused, set unchanged.
      assert.deepEqual(await rtPush(w, 'presence_subscribe', { add: ['y', 'z'] }), ['error', { reason: CAP_ERROR }]);
      assert.deepEqual(await rtPush(w, 'presence_subscribe', { remove: [] }), ['ok', { keys: 3 }]);
      // A list longer than the cap is refused by the session the same way.
      assert.deepEqual(
        await rtPush(w, 'presence_subscribe', { add: ['1', '2', '3', '4', '5'] }),
        ['error', { reason: CAP_ERROR }],
      );
      // Still subscribed to b, c (and x): b leaving is seen, a's changes are not.
      await rawUntrack(b, wire);
      await rawTrack(a, wire, { name: 'a', v: 3 });
      await rawTrack(c, wire, { name: 'c', v: 3 });
      await waitFor(() => w.presenceState().c?.[0]?.v === 3, 5000, "c's update");
      assert.deepEqual(keysOf(w.presenceState()), ['c']);
      await assertHealthy(node);
    });
  }

  test('raw frames: diffs carry only subscribed keys and empty ones are not sent; a plain client sees everything', async () => {
    const topic = 'realtime:' + uid('selraw');
    const a = await member(topic, 'a');
    const b = await member(topic, 'b');
    const s = await rawJoined(topic, 's', { enabled: true });
    const p = await rawJoined(topic, 'p', { enabled: true });
    await waitKeys('plain state', () => view(p, topic), ['a', 'b']);
    assert.deepEqual((await rawPush(s, topic, 'presence_subscribe', { add: ['a'] })).response, { keys: 1 });
    await waitKeys('subscribed state', () => view(s, topic), ['a']);
    const from = s.messages.length;
    for (let i = 0; i < 5; i++) await rawTrack(b, topic, { name: 'b', v: i });
    await rawTrack(a, topic, { name: 'a', v: 1 });
    await waitFor(() => view(s, topic).a?.[0]?.v === 1, 5000, "a's update at s");
    await waitFor(() => view(p, topic).a?.[0]?.v === 1, 5000, "a's update at p");
    assert.deepEqual(diffKeys(s, topic, from), ['a']);
    assert.equal(frames(s, topic, 'presence_diff').length, 1, 'one diff frame (a), none for b');
    assert.equal(view(p, topic).b[0].v, 4);
    assert.deepEqual(keysOf(view(s, topic)), ['a']);
    // The gauge counts the subscription.
    const metrics = await (await fetch(`${node.http}/metrics`)).text();
    const gauge = Number(/^chorus_presence_subscriptions (\d+)/m.exec(metrics)?.[1]);
    assert.ok(gauge >= 1, `chorus_presence_subscriptions ${gauge}`);
  });

  test('phoenix.js: presence_subscribe through channel.push', async () => {
    const topic = 'realtime:' + uid('selpx');
    await member(topic, 'carol');
    const socket = phoenix(node, '2.0.0', { apikey: token('px') });
    const ch = socket.channel(topic, { config: { presence: { key: 'px', enabled: true } } });
    const presence = new PhoenixPresence(ch);
    await phoenixJoin(ch);
    await member(topic, 'dave');
    await waitKeys('phoenix.js Presence at join', () => Object.fromEntries(presence.list((k, p) => [k, p])), ['carol', 'dave']);
    const [status, resp] = await phoenixPush(ch, 'presence_subscribe', { add: ['carol', 'nobody'] });
    assert.deepEqual([status, resp], ['ok', { keys: 2 }]);
    await waitKeys('phoenix.js Presence after subscribe', () => Object.fromEntries(presence.list((k, p) => [k, p])), ['carol']);
    assert.deepEqual(await phoenixPush(ch, 'presence_subscribe', { add: ['1', '2', '3'] }), ['error', { reason: CAP_ERROR }]);
    assert.deepEqual(await phoenixPush(ch, 'presence_subscribe', { remove: ['nobody'] }), ['ok', { keys: 1 }]);
  });
});

describe('large rooms', () => {
  test('relevant sets (host, friends from JWT claim and join config, recent chatter, sample), presence_count, top-ups, back to plain', async () => {
    const room = uid('big');
    const topic = `realtime:room:${room}:chat`;
    await putRoom(room, { host: 'h' });
    const m = {};
    for (const k of ['h', 'f1', 'f2', 'c', 's1']) m[k] = await member(topic, k, { ack: k === 'c' });
    // c chats (persisted on the chat lane, acknowledged after the commit).
    const r = await rawPush(m.c, topic, 'broadcast', { type: 'broadcast', event: 'msg', payload: { text: 'hi' } });
    assert.equal(r.status, 'ok', JSON.stringify(r));
    // Viewers (no presence of their own), joined while the room is small.
    const v1 = await realtimeWatcher('2.0.0', `room:${room}:chat`, 'v1', { friends: ['f1'], claims: { friends: ['f2'] } });
    const v2 = await rawJoined(topic, 'v2', { enabled: true, friends: ['f1'] });
    const v3 = await rawJoined(topic, 'v3', { enabled: true });
    for (const [what, get] of [['v1', () => v1.presenceState()], ['v2', () => view(v2, topic)], ['v3', () => view(v3, topic)]]) {
      await waitKeys(`${what} full state while small`, get, ['c', 'f1', 'f2', 'h', 's1']);
    }
    assert.equal(frames(v2, topic, 'presence_count').length, 0, 'no count in a small room');

    // A sixth key makes the room large.
    m.s2 = await member(topic, 's2');
    // Host first, then the JWT claim's friend, then the join config's (the cap cuts the chatter).
    await waitKeys('v1 relevant set', () => v1.presenceState(), ['f1', 'f2', 'h']);
    // Host, the join config's friend, the recent chatter.
    await waitKeys('v2 relevant set', () => view(v2, topic), ['c', 'f1', 'h']);
    // Host, the chatter, one sampled member.
    await waitFor(() => keysOf(view(v3, topic)).length === 3, 5000, 'v3 relevant set');
    const v3set = keysOf(view(v3, topic));
    assert.ok(v3set.includes('h') && v3set.includes('c'), JSON.stringify(v3set));
    // presence_count on crossing.
    await waitFor(() => v1.counts.includes(6), 5000, 'v1 presence_count 6');
    await waitFor(() => frames(v2, topic, 'presence_count').some((f) => f.payload.count === 6), 5000, 'v2 count');

    // Diffs only for keys in the set: s1 updates (not in v2's set), then h.
    const from = v2.messages.length;
    await rawTrack(m.s1, topic, { name: 's1', v: 2 });
    await rawTrack(m.h, topic, { name: 'h', v: 2 });
    await waitFor(() => view(v2, topic).h?.[0]?.v === 2, 5000, "h's update at v2");
    assert.deepEqual(diffKeys(v2, topic, from), ['h']);

    // A late joiner gets its relevant set and the count at once.
    const v4 = await rawJoined(topic, 'v4', { enabled: true, friends: ['s2', 'f2'] });
    await waitKeys('v4 relevant set at join', () => view(v4, topic), ['f2', 'h', 's2']);
    await waitFor(() => frames(v4, topic, 'presence_count').some((f) => f.payload.count === 6), 5000, 'v4 count');

    // c leaves: v2's set has room. A stranger joining is not added; the
    // recent chatter coming back is.
    const before = v2.messages.length;
    await rawUntrack(m.c, topic);
    await waitKeys('v2 without c', () => view(v2, topic), ['f1', 'h']);
    m.s3 = await member(topic, 's3');
    await rawTrack(m.c, topic, { name: 'c', v: 2 });
    await waitKeys('v2 with c again', () => view(v2, topic), ['c', 'f1', 'h']);
    assert.deepEqual(diffKeys(v2, topic, before), ['c']);
    // The count follows (throttled to one per second): 7 keys now.
    await waitFor(() => frames(v2, topic, 'presence_count').some((f) => f.payload.count === 7), 5000, 'v2 count 7');
    await waitFor(() => v1.counts.includes(7), 5000, 'v1 count 7');
    const counts = frames(v2, topic, 'presence_count').map((f) => f.payload.count);
    for (let i = 1; i < counts.length; i++) assert.notEqual(counts[i], counts[i - 1], `unchanged count resent: ${counts}`);

    // Shrinking below 90% of the threshold (4 keys): full presence again.
    await rawUntrack(m.s1, topic);
    await rawUntrack(m.s2, topic);
    await rawUntrack(m.s3, topic);
    const four = ['c', 'f1', 'f2', 'h'];
    await waitKeys('v1 full state again', () => v1.presenceState(), four);
    await waitKeys('v2 full state again', () => view(v2, topic), four);
    await waitKeys('v3 full state again', () => view(v3, topic), four);
    // Plain presence from now on: s1 (not in anyone's old set) is seen by all.
    await rawTrack(m.s1, topic, { name: 's1', v: 3 });
    await waitKeys('v1 sees s1', () => v1.presenceState(), ['c', 'f1', 'f2', 'h', 's1']);
    await waitKeys('v2 sees s1', () => view(v2, topic), ['c', 'f1', 'f2', 'h', 's1']);
    await assertHealthy(node);
  });

  test('a subscribed client keeps its subscription when the room grows', async () => {
    const topic = 'realtime:' + uid('bigsub');
    const s = await rawJoined(topic, 'watcher', { enabled: true });
    assert.deepEqual((await rawPush(s, topic, 'presence_subscribe', { add: ['k0', 'k6'] })).response, { keys: 2 });
    const members = [];
    for (let i = 0; i < 7; i++) members.push(await member(topic, `k${i}`));
    await waitKeys('subscribed keys only', () => view(s, topic), ['k0', 'k6']);
    assert.deepEqual(diffKeys(s, topic), ['k0', 'k6']);
    assert.equal(frames(s, topic, 'presence_count').length, 0);
  });
});

describe('green dot', () => {
  test('presence_online answers which keys are online anywhere; bad queries get errors', async () => {
    const topic = 'realtime:' + uid('dot');
    const alice = await member(topic, 'dot-alice');
    const q = await RawClient.open(node, '2.0.0', '/realtime/v1/websocket', `apikey=${token('q')}`);
    const ask = async (payload) => q.reply(q.push('phoenix', 'presence_online', payload));
    await waitFor(async () => (await ask({ keys: ['dot-alice'] })).response.online['dot-alice'] === true, 5000, 'alice online');
    assert.deepEqual(await ask({ keys: ['dot-alice', 'dot-bob'] }), {
      status: 'ok',
      response: { online: { 'dot-alice': true, 'dot-bob': false } },
    });
    assert.deepEqual(await ask({ keys: ['1', '2', '3', '4', '5'] }), { status: 'error', response: { reason: CAP_ERROR } });
    for (const bad of [{}, { keys: 'dot-alice' }, { keys: [1] }, { keys: [''] }, ['dot-alice'], null]) {
      const r = await ask(bad);
      assert.equal(r.status, 'error', JSON.stringify(bad));
      assert.match(r.response.reason, /keys|presence_online/, JSON.stringify(r));
    }
    // Leaving takes the green dot away.
    await rawUntrack(alice, topic);
    await waitFor(async () => (await ask({ keys: ['dot-alice'] })).response.online['dot-alice'] === false, 5000, 'alice offline');
  });
});

describe('malformed payloads', () => {
  test('bad presence_subscribe payloads get errors; the channel and other clients are unharmed', async () => {
    const topic = 'realtime:' + uid('bad');
    const a = await member(topic, 'a');
    const bad = await rawJoined(topic, 'bad', { enabled: true });
    const good = await rawJoined(topic, 'good', { enabled: true });
    await waitKeys('good state', () => view(good, topic), ['a']);
    const payloads = [null, [], 'add', {}, { add: 'a' }, { add: [1] }, { add: [''] }, { remove: {} }, { add: ['x'.repeat(300)] }];
    for (const p of payloads) {
      const r = await rawPush(bad, topic, 'presence_subscribe', p);
      assert.equal(r.status, 'error', `${JSON.stringify(p)} → ${JSON.stringify(r)}`);
      assert.ok(r.response.reason.length > 0);
    }
    // Not joined: unmatched topic.
    const r = await bad.reply(bad.push('realtime:not-joined', 'presence_subscribe', { add: ['a'] }));
    assert.deepEqual(r, { status: 'error', response: { reason: 'unmatched topic' } });
    // The bad client is still in plain mode (nothing was applied) and the
    // good one still gets presence.
    await rawTrack(a, topic, { name: 'a', v: 9 });
    await waitFor(() => view(good, topic).a?.[0]?.v === 9, 5000, 'good sees a');
    await waitFor(() => view(bad, topic).a?.[0]?.v === 9, 5000, 'bad still plain');
    assert.equal(bad.closed, null);
    await assertHealthy(node);
  });
});
