// Identity comes from the token (issue 11, items 1 and 2), with the real
// realtime-js client against a node with auth on: a session's presence key
// is its JWT `sub` (another key is refused with the reason), so nobody can
// publish `playback` as the room host; private topics are joined, sent to
// and tracked only as the node's topic policies allow (default deny, every
// refusal naming the policy); a token that expires closes the channels
// joined with it, Supabase's way (a `system` message, then the close).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { closeAll, realtime, signJwt, startNode, subscribe, uid, waitFor, within } from './lib/node.mjs';

const SECRET = 'chorus-identity-test-secret-0123456789';
const now = () => Math.floor(Date.now() / 1000);
const token = (claims, ttl = 3600) => signJwt({ exp: now() + ttl, role: 'authenticated', ...claims }, SECRET);
const SERVICE = signJwt({ exp: now() + 3600, role: 'service_role' }, SECRET);

// Room chat lanes are for members; only the room's host sends on its audio
// lane (the first matching policy decides, so the narrow one comes first).
const POLICIES = [
  { name: 'room host plays', topic: 'room:{id}:audio', actions: ['send'], claims: { room_host: '{id}' } },
  { name: 'room members', topic: 'room:{id}:*', actions: ['join', 'send', 'track'], claims: { rooms: '{id}' } },
];

let node;
before(async () => {
  node = await startNode({
    CHORUS_JWT_SECRET: SECRET,
    CHORUS_AUTH_POLICIES: JSON.stringify(POLICIES),
  });
});
after(async () => {
  await closeAll();
  await node?.stop();
});

/** Resolves with the first status other than SUBSCRIBED (and its error). */
function refusedJoin(channel) {
  return within(
    new Promise((resolve, reject) =>
      channel.subscribe((status, err) => {
        if (status === 'SUBSCRIBED') reject(new Error('the join was accepted'));
        else resolve({ status, err });
      }),
    ),
    5000,
    `join of ${channel.topic}`,
  );
}

async function putRoom(room, state) {
  const res = await fetch(`${node.http}/realtime/v1/api/rooms/${room}`, {
    method: 'PUT',
    headers: { apikey: SERVICE, 'content-type': 'application/json' },
    body: JSON.stringify(state),
  });
  assert.equal(res.status, 200, await res.text());
}

describe('the presence key is the token’s sub', () => {
  test('a user cannot take the host’s key; without a key she is herself in presence', async () => {
    const room = uid('r');
    const mallory = realtime(node, '2.0.0', { apikey: token({ sub: 'mallory', rooms: [room] }) });
    const spoof = mallory.channel(`room:${room}:chat`, { config: { private: true, presence: { key: 'alice' } } });
    const { status, err } = await refusedJoin(spoof);
    assert.equal(status, 'CHANNEL_ERROR');
    assert.match(err.message, /presence_key_mismatch/);
    assert.match(err.message, /"mallory"/);
    // A second client of hers (realtime-js keeps the refused channel for
    // its topic and retries it).
    const again = realtime(node, '2.0.0', { apikey: token({ sub: 'mallory', rooms: [room] }) });
    const self = again.channel(`room:${room}:chat`, { config: { private: true } });
    self.on('presence', { event: 'sync' }, () => {});
    await subscribe(self);
    await self.track({ online_at: 1 });
    await waitFor(() => Object.keys(self.presenceState()).includes('mallory'), 5000, 'mallory in presence');
    assert.deepEqual(Object.keys(self.presenceState()), ['mallory']);
  });

  test('playback from a member who is not the room host is refused with the policy named', async () => {
    const room = uid('r');
    await putRoom(room, { host: 'alice' });
    const listener = realtime(node, '2.0.0', { apikey: token({ sub: 'bob', rooms: [room] }) });
    const heard = [];
    const lch = listener.channel(`room:${room}:audio`, { config: { private: true } });
    lch.on('broadcast', { event: 'playback' }, (m) => heard.push(m.payload));
    await subscribe(lch);

    const mallory = realtime(node, '2.0.0', { apikey: token({ sub: 'mallory', rooms: [room] }) });
    const mch = mallory.channel(`room:${room}:audio`, {
      config: { private: true, broadcast: { ack: true } },
    });
    await subscribe(mch);
    const playback = { track: 't1', position_ms: 0, playing: true, taken_at_ms: Date.now() };
    const sent = await mch.send({ type: 'broadcast', event: 'playback', payload: playback });
    assert.notEqual(sent, 'ok', 'mallory is not the host');

    const alice = realtime(node, '2.0.0', { apikey: token({ sub: 'alice', rooms: [room], room_host: [room] }) });
    const ach = alice.channel(`room:${room}:audio`, { config: { private: true, broadcast: { ack: true } } });
    await subscribe(ach);
    assert.equal(await ach.send({ type: 'broadcast', event: 'playback', payload: playback }), 'ok');
    await waitFor(() => heard.length === 1, 5000, 'the host’s playback');
    assert.equal(heard[0].track, 't1');
  });
});

describe('private topics follow the policies', () => {
  test('a non-member is refused by the named policy; `private: true` elsewhere is denied by default', async () => {
    const room = uid('r');
    const outsider = realtime(node, '2.0.0', { apikey: token({ sub: 'eve', rooms: ['other'] }) });
    const r1 = await refusedJoin(outsider.channel(`room:${room}:chat`, { config: { private: true } }));
    assert.match(r1.err.message, /policy "room members"/);
    // A covered topic is private even when the client does not say so.
    const r2 = await refusedJoin(outsider.channel(`room:${room}:reactions`));
    assert.match(r2.err.message, /room members/);
    const r3 = await refusedJoin(outsider.channel(uid('lobby'), { config: { private: true } }));
    assert.match(r3.err.message, /denied by default/);
    // Public topics stay open to any valid token.
    await subscribe(outsider.channel(uid('lobby')));
  });

  test('a member sends on the chat lane; a non-host member’s broadcast on the audio lane is refused', async () => {
    const room = uid('r');
    const member = realtime(node, '2.0.0', { apikey: token({ sub: 'bob', rooms: [room] }) });
    const chat = member.channel(`room:${room}:chat`, { config: { private: true, broadcast: { ack: true, self: true } } });
    const got = [];
    chat.on('broadcast', { event: 'm' }, (m) => got.push(m.payload));
    await subscribe(chat);
    assert.equal(await chat.send({ type: 'broadcast', event: 'm', payload: { hi: 1 } }), 'ok');
    await waitFor(() => got.length === 1, 5000, 'own chat message');

    const audio = member.channel(`room:${room}:audio`, { config: { private: true, broadcast: { ack: true } } });
    await subscribe(audio);
    assert.notEqual(await audio.send({ type: 'broadcast', event: 'note', payload: {} }), 'ok');
  });
});

describe('token expiry', () => {
  test('a channel joined with a token that expires gets a system message and is closed', async () => {
    const room = uid('r');
    const short = token({ sub: 'carol', rooms: [room] }, 3);
    const c = realtime(node, '2.0.0', { apikey: short, heartbeatIntervalMs: 1000 });
    const ch = c.channel(`room:${room}:chat`, { config: { private: true } });
    const system = [];
    ch.on('system', {}, (m) => system.push(m));
    await subscribe(ch);
    await waitFor(() => system.some((m) => m.status === 'error'), 10000, 'the expiry system message');
    assert.match(system.find((m) => m.status === 'error').message, /token has expired/);
    await waitFor(() => ch.state === 'closed' || ch.state === 'errored', 5000, 'the channel closed');
  });
});

describe('a REST post carries its token’s identity', () => {
  test('a REST post retried with the same msg_id is stored and delivered once; another caller’s same id is its own', async () => {
    const room = uid('r');
    const topic = `room:${room}:chat`;
    const member = realtime(node, '2.0.0', { apikey: token({ sub: 'dana', rooms: [room] }) });
    const ch = member.channel(topic, { config: { private: true } });
    const got = [];
    ch.on('broadcast', { event: 'm' }, (m) => got.push(m.payload.text));
    await subscribe(ch);

    const backend = (sub) => signJwt({ exp: now() + 3600, role: 'service_role', sub }, SECRET);
    const post = async (apikey, text) => {
      const res = await fetch(`${node.http}/realtime/v1/api/broadcast`, {
        method: 'POST',
        headers: { apikey, 'content-type': 'application/json' },
        body: JSON.stringify({ messages: [{ topic, event: 'm', payload: { msg_id: 'order-1', text } }] }),
        signal: AbortSignal.timeout(5000),
      });
      assert.equal(res.status, 202, await res.text());
    };
    // A backend retries its post (it did not see the first 202).
    await post(backend('backend-1'), 'first try');
    await post(backend('backend-1'), 'retry');
    // Another backend's msg_id is its own.
    await post(backend('backend-2'), 'other caller');
    await waitFor(() => got.length >= 2, 5000, 'two deliveries');
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(got, ['first try', 'other caller']);

    const res = await fetch(`${node.http}/realtime/v1/api/channels/${encodeURIComponent(topic)}/messages`, {
      headers: { apikey: SERVICE },
      signal: AbortSignal.timeout(5000),
    });
    const text = await res.text();
    assert.equal(res.status, 200, text);
    assert.deepEqual(
      JSON.parse(text).messages.map((m) => m.payload.text),
      ['other caller', 'first try'],
    );
  });
});
