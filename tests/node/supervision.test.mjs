// Supervision correctness (issue 11, item 4): after a channel crashes and
// its supervisor restarts it, the directory knows the restarted channel, so
// the next join finds it instead of starting a second channel for the same
// topic (an orphan that never stopped). Channels are crashed through the
// test-only fault switch (CHORUS_NODE_FAULT_INJECTION).

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { closeAll, realtime, startNode, subscribe, uid, waitFor } from './lib/node.mjs';

const SHARDS = 4;
let node;
before(async () => {
  node = await startNode({ CHORUS_NODE_FAULT_INJECTION: 'true', CHORUS_PRESENCE_SHARDS: String(SHARDS) });
});
after(async () => {
  await closeAll();
  await node?.stop();
});

async function metric(name) {
  const res = await fetch(`${node.http}/metrics`, { signal: AbortSignal.timeout(5000) });
  const line = (await res.text()).split('\n').find((l) => l.startsWith(`${name} `));
  return line === undefined ? null : Number(line.split(' ')[1]);
}

test('a crashed channel is restarted and found again: one channel per topic, no orphan', async () => {
  const topic = uid('orphan');
  const a = realtime(node, '2.0.0');
  const chA = a.channel(topic);
  await subscribe(chA);
  await waitFor(async () => (await metric('chorus_channels')) === 1, 5000, 'one channel');
  const restarts = await metric('chorus_restarts_total');
  chA.channelAdapter.push('chorus_crash_channel', {});
  await waitFor(async () => (await metric('chorus_restarts_total')) > restarts, 5000, 'the channel restarted');

  // A new client joins and talks on the same topic.
  const b = realtime(node, '2.0.0');
  const chB = b.channel(topic, { config: { broadcast: { ack: true, self: true } } });
  const got = [];
  chB.on('broadcast', { event: '*' }, (m) => got.push(m.payload));
  await subscribe(chB);
  assert.equal(await chB.send({ type: 'broadcast', event: 'm', payload: { n: 1 } }), 'ok');
  await waitFor(() => got.length === 1, 5000, 'own broadcast');
  // Still one channel process for the topic: the restarted one.
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(await metric('chorus_channels'), 1);
});

// The green dot after a presence shard crash (issue 14, item 4): a shard the
// supervisor restarts starts empty and takes back what its node's channels
// hold (each re-reports its keys as absolute counts), so users tracked
// before the crash show online again without tracking again, and the
// deltas that race the rebuild are neither lost nor counted twice.
// The shard of a presence key (core::ring::shard_of: FNV-1a, then the
// MurmurHash3 finaliser, modulo the shard count).
function shardOf(key) {
  const M = (1n << 64n) - 1n;
  let h = 0xcbf29ce484222325n;
  for (const b of Buffer.from(key)) h = ((h ^ BigInt(b)) * 0x100000001b3n) & M;
  h ^= h >> 33n;
  h = (h * 0xff51afd7ed558ccdn) & M;
  h ^= h >> 33n;
  h = (h * 0xc4ceb9fe1a85ec53n) & M;
  h ^= h >> 33n;
  return Number(h % BigInt(SHARDS));
}

async function onlineKeys(keys) {
  const res = await fetch(`${node.http}/realtime/v1/api/presence/online?keys=${keys.map(encodeURIComponent).join(',')}`, {
    headers: { apikey: 'anon' },
    signal: AbortSignal.timeout(3000),
  });
  assert.equal(res.status, 200);
  return (await res.json()).online.sort();
}

async function tracked(topic, key) {
  const client = realtime(node, '2.0.0');
  const ch = client.channel(topic, { config: { presence: { key } } });
  await subscribe(ch);
  assert.equal(await ch.track({ online: true }), 'ok');
  return ch;
}

test('a restarted presence shard gets its node\'s users back: no re-track, no double count', async () => {
  const run = uid('dot');
  const [roomA, roomB] = [`${run}-a`, `${run}-b`];
  const users = Array.from({ length: 12 }, (_, i) => `${run}-u${i}`);
  const members = new Map();
  for (const [i, key] of users.entries()) members.set(key, await tracked(i % 2 ? roomA : roomB, key));
  // u0 is also in the other room: two presences on this node.
  const second = await tracked(roomA, users[0]);
  await waitFor(async () => (await onlineKeys(users)).length === users.length, 5000, 'everyone online');

  // Crash every shard (each once), through a user it holds.
  const restarts = await metric('chorus_restarts_total');
  const probe = members.get(users[1]);
  const crashed = new Set();
  for (const key of users) {
    if (crashed.has(shardOf(key))) continue;
    crashed.add(shardOf(key));
    probe.channelAdapter.push('chorus_crash_presence', { key });
    await waitFor(async () => (await metric('chorus_restarts_total')) >= restarts + crashed.size, 5000, 'the shard restarted');
  }
  assert.ok(crashed.size >= 3, `crashed ${crashed.size} shards`);

  // Racing the rebuild: u2 leaves and a newcomer tracks.
  const newcomer = `${run}-new`;
  await members.get(users[2]).untrack();
  const late = await tracked(roomB, newcomer);
  const want = [...users.filter((k) => k !== users[2]), newcomer].sort();
  await waitFor(
    async () => JSON.stringify(await onlineKeys([...users, newcomer])) === JSON.stringify(want),
    5000,
    'the users tracked before the crash online again, the one who left offline',
  );

  // Leaving after the rebuild takes the green dot away: nothing counted twice.
  await members.get(users[3]).untrack();
  await late.untrack();
  await members.get(users[0]).untrack();
  await waitFor(async () => !(await onlineKeys([users[3], newcomer])).length, 5000, 'leavers offline');
  assert.deepEqual(await onlineKeys([users[0]]), [users[0]], 'u0 is still in the other room');
  await second.untrack();
  await waitFor(async () => !(await onlineKeys([users[0]])).length, 5000, 'u0 offline once both presences left');
});

test('a presence shard crashed twice in a row counts each channel once', async () => {
  const run = uid('twice');
  const users = Array.from({ length: 6 }, (_, i) => `${run}-u${i}`);
  const members = [];
  for (const [i, key] of users.entries()) members.push(await tracked(`${run}-r${i % 3}`, key));
  await waitFor(async () => (await onlineKeys(users)).length === users.length, 5000, 'everyone online');
  const key = users[0];
  const same = users.filter((k) => shardOf(k) === shardOf(key));
  // The second crash may reach the shard's next incarnation while it
  // rebuilds: the re-reports asked for by the first are not counted by the
  // next (they go to the asking process).
  const restarts = await metric('chorus_restarts_total');
  members[1].channelAdapter.push('chorus_crash_presence', { key });
  await waitFor(async () => (await metric('chorus_restarts_total')) > restarts, 5000, 'the shard restarted');
  members[1].channelAdapter.push('chorus_crash_presence', { key });
  await waitFor(async () => (await metric('chorus_restarts_total')) > restarts + 1, 5000, 'the shard restarted again');
  await waitFor(async () => (await onlineKeys(users)).length === users.length, 5000, 'everyone online again');
  // One leave each: every user of that shard goes offline.
  for (const [i, key] of users.entries()) if (same.includes(key)) await members[i].untrack();
  await waitFor(async () => !(await onlineKeys(same)).length, 5000, `${same} offline after one leave each`);
});

// The green dot after a CHANNEL crash (issue 14, item 4): the crashed
// channel never reported the leaves of the presences it held, so without
// more its users' +1s stayed in the shards and, after they rejoined (+1)
// and left (-1), they showed online forever. The directory that sees the
// channel restarted asks its node's shards to rebuild their counts from
// the live channels (swapped in when done).
async function rejoining(topic, key) {
  const client = realtime(node, '2.0.0');
  const ch = client.channel(topic, { config: { presence: { key } } });
  const c = { ch, joins: 0, tracks: 0 };
  await new Promise((resolve) => {
    ch.subscribe(async (status) => {
      if (status !== 'SUBSCRIBED') return;
      c.joins += 1;
      // As realtime-js apps do: track in the SUBSCRIBED callback, so again
      // after a rejoin.
      if ((await ch.track({ online: true })) === 'ok') c.tracks += 1;
      resolve();
    });
  });
  return c;
}

test('a crashed channel\'s users go offline once they leave; other rooms\' users stay online', async () => {
  const run = uid('chcrash');
  const [room, other] = [`${run}-room`, `${run}-other`];
  const users = Array.from({ length: 6 }, (_, i) => `${run}-u${i}`);
  const bystanders = [`${run}-b0`, `${run}-b1`];
  const inRoom = [];
  for (const key of users) inRoom.push(await rejoining(room, key));
  for (const key of bystanders) await rejoining(other, key);
  await waitFor(async () => (await onlineKeys([...users, ...bystanders])).length === 8, 5000, 'everyone online');

  const restarts = await metric('chorus_restarts_total');
  inRoom[0].ch.channelAdapter.push('chorus_crash_channel', {});
  await waitFor(async () => (await metric('chorus_restarts_total')) > restarts, 5000, 'the channel restarted');
  // realtime-js rejoins by itself (phx_error) and the app tracks again.
  await waitFor(() => inRoom.every((c) => c.joins >= 2 && c.tracks >= 2), 15000, 'every user rejoined and tracked again');
  await waitFor(async () => (await onlineKeys(users)).length === users.length, 5000, 'the room online again');

  // Half leave by untracking, half by closing their channel.
  for (const [i, c] of inRoom.entries()) {
    if (i % 2) await c.ch.untrack();
    else await c.ch.unsubscribe();
  }
  await waitFor(async () => !(await onlineKeys(users)).length, 12000, 'the users who left offline on the green dot');
  assert.deepEqual(await onlineKeys(bystanders), [...bystanders].sort(), 'the other room\'s users stay online');
});
