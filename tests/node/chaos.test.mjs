// Chaos under load, small (issue 11, item 9): 100 realtime-js clients in 10
// rooms send acked chat while channel processes and presence shards are
// crashed (test-only fault switch) and the node is killed with SIGKILL and
// started again on the same port and data. No acked message may be lost,
// every client must be back in its room, and each recovery must stay under
// the seed's promise (20 s). The full run (1,000 clients) is bench/chaos.mjs.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { runChaos } from './lib/chaos.mjs';

test('chaos: channel and presence-shard crashes and a node SIGKILL lose nothing acked', { timeout: 240000 }, async () => {
  const r = await runChaos({
    clients: 100,
    rooms: 10,
    channelKills: 3,
    presenceKills: 2,
    nodeKill: true,
    sendIntervalMs: 300,
    log: (line) => console.log(`# ${line}`),
  });
  console.log(`# ${JSON.stringify(r.recovery)}`);
  assert.ok(r.acked > 500, `acked chat under load: ${r.acked}`);
  assert.equal(r.lost, 0, `acked messages missing from history: ${r.lost_sample.join(', ')}`);
  assert.equal(r.clients_joined_at_end, 100, 'every client back in its room');
  assert.equal(r.recovery.channel_kill.count, 3);
  assert.equal(r.recovery.presence_shard_kill.count, 2);
  assert.equal(r.recovery.node_kill_per_client.count, 100);
  for (const [kind, s] of Object.entries(r.recovery)) {
    assert.ok(s.max_ms < 20000, `${kind}: slowest recovery ${s.max_ms} ms (the seed promises < 20 s)`);
  }
});
