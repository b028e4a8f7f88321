// Chaos under load (issue 11, item 9): realtime-js clients in rooms send
// acked chat while channel processes and presence shards are crashed through
// the test-only fault switch (node.fault_injection) and the node is killed
// with SIGKILL and started again on the same port and data. Measures each
// recovery and checks that no acked message is lost and that every client
// is back in its room. Used by tests/node/chaos.test.mjs (small, in
// scripts/test.sh) and bench/chaos.mjs (1,000 clients, results file).

import { allHistory, closeAll, realtime, startNode, uid, waitFor } from './node.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The `q` quantile (0..1) of `values` (nearest rank), null when empty. */
export function quantile(values, q) {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil(q * sorted.length)));
  return sorted[rank - 1];
}

function summary(values) {
  return {
    count: values.length,
    p50_ms: quantile(values, 0.5),
    p99_ms: quantile(values, 0.99),
    max_ms: values.length ? Math.max(...values) : null,
  };
}

async function metric(node, name) {
  const res = await fetch(`${node.http}/metrics`, { signal: AbortSignal.timeout(5000) });
  const line = (await res.text()).split('\n').find((l) => l.startsWith(`${name} `));
  return line === undefined ? 0 : Number(line.split(' ')[1]);
}

/**
 * Runs the chaos scenario. Options: clients, rooms, channelKills,
 * presenceKills, nodeKill (bool), sendIntervalMs, log (function).
 * Resolves with the results (recoveries, counts, losses); throws only on a
 * harness failure. The caller decides what passes.
 */
export async function runChaos({
  clients: clientCount = 100,
  rooms: roomCount = 10,
  channelKills = 3,
  presenceKills = 2,
  nodeKill = true,
  sendIntervalMs = 500,
  log = () => {},
} = {}) {
  const env = {
    CHORUS_NODE_FAULT_INJECTION: 'true',
    CHORUS_LIMITS_MAX_CONNECTIONS_PER_IP: String(clientCount * 4 + 100),
  };
  let node = await startNode(env);
  const { port, dataDir } = node;
  const nodes = [node];
  const run = uid('chaos');
  const rooms = Array.from({ length: roomCount }, (_, r) => ({
    topic: `room:${run}-${r}:chat`,
    members: [],
    acked: new Set(),
  }));
  const clients = [];
  const started = Date.now();

  // Connect and join, 50 at a time.
  for (let i = 0; i < clientCount; i += 50) {
    await Promise.all(
      Array.from({ length: Math.min(50, clientCount - i) }, async (_, k) => {
        const id = i + k;
        const room = rooms[id % roomCount];
        const client = realtime(node, id % 2 ? '1.0.0' : '2.0.0', {
          // Spread reconnects a little, as real clients' timers are.
          reconnectAfterMs: () => 100 + Math.floor(Math.random() * 200),
          heartbeatIntervalMs: 5000,
          timeout: 10000,
        });
        const ch = client.channel(room.topic, { config: { broadcast: { ack: true } } });
        const c = { id, client, ch, room, sent: 0, got: new Set(), inflight: 0 };
        ch.on('broadcast', { event: '*' }, (m) => {
          if (m.payload?.probe) c.got.add(m.payload.probe);
        });
        await new Promise((resolve, reject) => {
          const t = setTimeout(() => reject(new Error(`client ${id} did not join ${room.topic}`)), 30000);
          ch.subscribe((status) => {
            if (status === 'SUBSCRIBED') {
              clearTimeout(t);
              resolve();
            }
          });
        });
        room.members.push(c);
        clients.push(c);
      }),
    );
  }
  log(`${clientCount} clients joined ${roomCount} rooms in ${Date.now() - started} ms`);

  // Acked chat from every client, each at its own phase.
  let sending = true;
  let refusedSends = 0;
  const loops = clients.map(async (c) => {
    await sleep(Math.random() * sendIntervalMs);
    while (sending) {
      if (c.ch.state === 'joined') {
        const n = c.sent++;
        c.inflight++;
        const status = await c.ch.send({ type: 'broadcast', event: 'm', payload: { c: c.id, n } });
        c.inflight--;
        if (status === 'ok') c.room.acked.add(`${c.id}:${n}`);
        else refusedSends++;
      }
      await sleep(sendIntervalMs);
    }
  });

  /** Until every member of `room` is joined and gets a fresh acked probe. */
  async function probeRoom(room, within) {
    const deadline = Date.now() + within;
    let k = 0;
    while (Date.now() < deadline) {
      const sender = room.members.find((m) => m.ch.state === 'joined');
      if (sender) {
        const probe = `${run}-p${k++}-${Math.random().toString(36).slice(2, 8)}`;
        const status = await sender.ch.send({ type: 'broadcast', event: 'probe', payload: { probe } });
        if (status === 'ok') {
          const others = room.members.filter((m) => m !== sender);
          const until = Math.min(deadline, Date.now() + 1000);
          while (Date.now() < until && !others.every((m) => m.got.has(probe))) await sleep(5);
          if (others.every((m) => m.got.has(probe))) return Date.now();
        }
      }
      await sleep(20);
    }
    throw new Error(`room ${room.topic} did not recover within ${within} ms`);
  }

  const recoveries = { channel: [], presence: [], node_per_client: [], node_all: [] };
  await sleep(1000);

  // Channel processes, one at a time.
  for (let k = 0; k < channelKills; k++) {
    const room = rooms[Math.floor(Math.random() * rooms.length)];
    const victim = room.members.find((m) => m.ch.state === 'joined');
    const restarts = await metric(node, 'chorus_restarts_total');
    const t0 = Date.now();
    victim.ch.channelAdapter.push('chorus_crash_channel', {});
    await waitFor(async () => (await metric(node, 'chorus_restarts_total')) > restarts, 10000, 'the channel restarted');
    const done = await probeRoom(room, 30000);
    recoveries.channel.push(done - t0);
    log(`channel kill ${k + 1}/${channelKills} (${room.topic}): recovered in ${done - t0} ms`);
    await sleep(300);
  }

  // Presence shards: crash the shard of a fresh key, then wait until a
  // client tracking that key is listed online again (the shard answers).
  for (let k = 0; k < presenceKills; k++) {
    const key = `${run}-pk${k}`;
    const victim = clients[Math.floor(Math.random() * clients.length)];
    const restarts = await metric(node, 'chorus_restarts_total');
    const t0 = Date.now();
    victim.ch.channelAdapter.push('chorus_crash_presence', { key });
    await waitFor(async () => (await metric(node, 'chorus_restarts_total')) > restarts, 10000, 'the shard restarted');
    const probe = realtime(node, '2.0.0');
    const pch = probe.channel(`${run}-presence-${k}`, { config: { presence: { key } } });
    await new Promise((resolve) => pch.subscribe((s) => s === 'SUBSCRIBED' && resolve()));
    await pch.track({ online: true });
    await waitFor(
      async () => {
        const res = await fetch(`${node.http}/realtime/v1/api/presence/online?keys=${encodeURIComponent(key)}`, {
          headers: { apikey: 'anon' },
          signal: AbortSignal.timeout(3000),
        });
        return res.status === 200 && (await res.json()).online.includes(key);
      },
      30000,
      `presence key ${key} online after the shard restart`,
    );
    const done = Date.now();
    recoveries.presence.push(done - t0);
    log(`presence shard kill ${k + 1}/${presenceKills}: recovered in ${done - t0} ms`);
    await pch.untrack();
    await sleep(300);
  }

  // The node itself: SIGKILL, then a new node on the same port and data.
  let restartMs = null;
  if (nodeKill) {
    const seen = new Map();
    const down = new Set();
    const t0 = Date.now();
    node.child.kill('SIGKILL');
    await waitFor(() => node.exited(), 10000, 'the killed node is gone');
    const watch = setInterval(() => {
      for (const c of clients) {
        if (c.ch.state !== 'joined') down.add(c.id);
        else if (down.has(c.id) && !seen.has(c.id)) seen.set(c.id, Date.now() - t0);
      }
    }, 10);
    node = await startNode(env, { port, dataDir });
    nodes.push(node);
    restartMs = Date.now() - t0;
    log(`node killed and started again: healthy after ${restartMs} ms`);
    try {
      await waitFor(() => seen.size === clients.length, 60000, 'every client rejoined after the node kill');
    } finally {
      clearInterval(watch);
    }
    recoveries.node_per_client = [...seen.values()];
    const all = Math.max(...recoveries.node_per_client);
    for (const room of rooms) await probeRoom(room, 30000);
    recoveries.node_all.push(Date.now() - t0);
    log(`every client rejoined ${all} ms after the kill; every room delivers again`);
  }

  // Stop sending, let the last acks arrive, then compare with history.
  await sleep(1000);
  sending = false;
  await Promise.all(loops);
  const rejoined = clients.filter((c) => c.ch.state === 'joined').length;
  for (const room of rooms) await probeRoom(room, 30000);
  let acked = 0;
  let lost = 0;
  const lostSample = [];
  for (const room of rooms) {
    const stored = new Set(
      (await allHistory(node, room.topic)).filter((m) => m.event === 'm').map((m) => `${m.payload.c}:${m.payload.n}`),
    );
    for (const key of room.acked) {
      acked++;
      if (!stored.has(key)) {
        lost++;
        if (lostSample.length < 10) lostSample.push(`${room.topic} ${key}`);
      }
    }
  }
  const result = {
    clients: clientCount,
    rooms: roomCount,
    send_interval_ms: sendIntervalMs,
    acked,
    lost,
    lost_sample: lostSample,
    sends_not_acked: refusedSends,
    clients_joined_at_end: rejoined,
    node_restart_ms: restartMs,
    recovery: {
      channel_kill: summary(recoveries.channel),
      presence_shard_kill: summary(recoveries.presence),
      node_kill_per_client: summary(recoveries.node_per_client),
      node_kill_all_rooms: summary(recoveries.node_all),
    },
    raw: recoveries,
    duration_ms: Date.now() - started,
  };
  await closeAll();
  for (const n of nodes) if (!n.exited()) await n.stopWith('SIGTERM');
  const { rmSync } = await import('node:fs');
  rmSync(dataDir, { recursive: true, force: true });
  return result;
}
