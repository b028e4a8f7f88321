// presence.remote_bytes across a cluster: what a presence shard holds from
// OTHER nodes' reports is bounded. Two nodes on loopback (CQL store), one
// presence shard each, the budget at its least (65536 bytes) and long keys
// (3000 bytes, each counted as its bytes plus 64): thirty users tracked in
// one topic, whose channel runs on its home node, overflow the other node's
// shard. That node refuses the keys past the budget with a logged reason
// (its users of them show offline there), the home node still sees every
// one of them, the other node's own users and its reports to the home node
// keep working, and once the long keys leave it holds reports again.
//
// Needs CHORUS_SCYLLA_NODES (scripts/test.sh starts Apache Cassandra and
// sets it): a cluster refuses SQLite.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { startCluster } from './lib/cluster.mjs';
import { closeAll, metric, realtime, subscribe, uid, waitFor } from './lib/node.mjs';

const BUDGET = 65536;
const KEY_BYTES = 3000;
const USERS = 30;

let cluster;
before(async () => {
  cluster = await startCluster({
    count: 2,
    prefix: 'remote-bytes',
    keyspace: 'chorus_cluster_presence_test',
    env: {
      CHORUS_PRESENCE_SHARDS: '1',
      CHORUS_PRESENCE_REMOTE_BYTES: String(BUDGET),
      CHORUS_LIMITS_PRESENCE_KEY_BYTES: '4096',
    },
  });
});
after(async () => {
  await closeAll();
  await cluster?.stop();
});

/** Whether node `n` says `key` is online anywhere (the admin API). */
async function isOnline(n, key) {
  const res = await fetch(`${n.http}/realtime/v1/api/presence/online?keys=${encodeURIComponent(key)}`, {
    signal: AbortSignal.timeout(3000),
  });
  assert.equal(res.status, 200);
  return (await res.json()).online.includes(key);
}

async function countOnline(n, keys) {
  let count = 0;
  for (const k of keys) count += Number(await isOnline(n, k));
  return count;
}

/** A realtime-js client on node `n` tracking `key` in `topic`. */
async function tracked(n, topic, key) {
  const ch = realtime(n, '2.0.0').channel(topic, { config: { presence: { key } } });
  await subscribe(ch, 10000);
  assert.equal(await ch.track({ on: true }), 'ok');
  return ch;
}

/**
 * A topic whose channel runs on node `home`, joined by a client there
 * tracking `key`: `{ topic, ch }`.
 */
async function topicHomedOn(home, key) {
  for (let i = 0; i < 20; i++) {
    const before = await Promise.all(cluster.nodes.map((n) => metric(n, 'chorus_channels')));
    const topic = uid('rb');
    const ch = await tracked(home, topic, key);
    const now = await Promise.all(cluster.nodes.map((n) => metric(n, 'chorus_channels')));
    if (now[cluster.nodes.indexOf(home)] > before[cluster.nodes.indexOf(home)]) return { topic, ch };
    await ch.unsubscribe();
  }
  throw new Error('no topic placed on that node in 20 tries');
}

test('a node whose reports exceed presence.remote_bytes is refused with a logged reason; presence keeps working', async () => {
  const [home, other] = cluster.nodes;
  const run = uid('big');
  const bigKeys = Array.from({ length: USERS }, (_, i) => `${run}-${i}-`.padEnd(KEY_BYTES, 'x'));
  // Every big key in one topic homed on `home`; its clients connect to either node.
  const { topic, ch: first } = await topicHomedOn(home, bigKeys[0]);
  const members = [first];
  for (const [i, key] of bigKeys.entries()) {
    if (i > 0) members.push(await tracked(cluster.nodes[i % 2], topic, key));
  }
  // The home node's own reports are never refused.
  await waitFor(async () => (await countOnline(home, bigKeys)) === USERS, 10000, 'the home node sees every user');
  // The other node holds at most what fits in the budget.
  const fits = Math.floor(BUDGET / (KEY_BYTES + 64));
  await waitFor(async () => (await countOnline(other, bigKeys)) === fits, 10000, `the other node sees ${fits} users`);
  await waitFor(
    () => /keys reported by node \d+ are refused: .*presence\.remote_bytes = 65536/.test(other.logs()),
    5000,
    'the refusal logged on the other node',
  );

  // The other node's own presence keeps working, seen on both nodes (the
  // home node holds nothing from it yet).
  const small = uid('small');
  await topicHomedOn(other, small);
  for (const n of [other, home]) await waitFor(() => isOnline(n, small), 5000, `${small} online on ${n.port}`);

  // Once the big keys leave, the other node holds the home node's reports again.
  for (const m of members) await m.untrack();
  await waitFor(async () => (await countOnline(home, bigKeys)) === 0, 10000, 'every big key offline');
  await waitFor(() => /other nodes' keys are held again/.test(other.logs()), 5000, 'the end of refusals logged');
  const late = uid('late');
  await tracked(home, topic, late);
  await waitFor(() => isOnline(other, late), 5000, 'a key the home node reports after the refusals');
});
