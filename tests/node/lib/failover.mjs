// Failover of a topic's home node, as the tests (tests/node/failover.test.mjs,
// tests/node/cluster-drain.test.mjs) and the bench (bench/failover.mjs) run
// it: realtime-js clients on every node of a cluster, all through HAProxy, in
// one chat-lane topic; acked messages; kill -9 (or, with `drain`, SIGTERM:
// a graceful drain) of the node that runs the topic's channel; then every
// client must receive again (the survivors' clients after `phx_error` and a
// rejoin at the topic's new home, the lost node's clients after
// reconnecting through HAProxy), with every acked message (live or replayed
// with `broadcast.replay`) and presence rebuilt.

import { RealtimeClient } from '@supabase/realtime-js';

import { WebSocket, metric, restBroadcast, uid, waitFor } from './node.mjs';

/**
 * One client through the load balancer `lb`, placed on server `server`
 * (n1..nN) while it is up. realtime-js' own reconnect and rejoin timings
 * unless `fast` (the test's 200 ms reconnect).
 */
function client(lb, server, vsn, topic, key, since, { fast }) {
  const rt = new RealtimeClient(lb.ws, {
    transport: WebSocket,
    vsn,
    params: { apikey: 'anon', node: server },
    timeout: 10000,
    ...(fast ? { reconnectAfterMs: () => 200 } : {}),
  });
  const ch = rt.channel(topic, {
    config: {
      private: true,
      broadcast: { self: true, ack: true, replay: { since, limit: 200 } },
      presence: { key },
    },
  });
  const c = { rt, ch, key, server, got: new Map(), joins: 0, firstAfter: null, errors: 0, events: [] };
  const mark = (what) => c.killAt && c.events.push(`${what}@${Date.now() - c.killAt}`);
  rt.socketAdapter.getSocket().onClose(() => mark('socket-closed'));
  rt.socketAdapter.getSocket().onOpen(() => mark('socket-open'));
  ch.on('broadcast', { event: '*' }, (m) => {
    const id = m.payload?.id;
    if (id === undefined) return;
    if (!c.got.has(id)) c.got.set(id, m.payload);
    if (c.killAt && c.firstAfter === null && m.payload.at > c.killAt && !m.meta?.replayed) {
      c.firstAfter = Date.now();
    }
  });
  ch.on('presence', { event: 'sync' }, () => {});
  ch.subscribe((status) => {
    mark(status);
    if (status === 'SUBSCRIBED') {
      c.joins += 1;
      // Presence lives in the channel process: after a rejoin at the new
      // home, the app tracks again (as realtime-js apps do).
      ch.track({ key }).catch(() => {});
    } else {
      c.errors += 1;
    }
  });
  c.close = async () => {
    try {
      rt.getChannels().forEach((x) => x.teardown());
      rt._cancelPendingDisconnect();
    } catch {}
    await new Promise((resolve) => {
      const t = setTimeout(resolve, 2000);
      rt.socketAdapter.getSocket().disconnect(() => {
        clearTimeout(t);
        resolve();
      });
    });
  };
  return c;
}

const keysOf = (c) => Object.keys(c.ch.presenceState()).sort().join();

/**
 * Runs the scenario once on `cluster` behind `lb`; returns what happened
 * (times in ms from the kill). `perNode` clients on each node. With `drain`
 * the home node gets SIGTERM instead of SIGKILL (a graceful drain), and the
 * result also has the drained node's exit, when every other node's
 * `chorus_cluster_nodes` dropped it (`membersDroppedMs`) and how many
 * clients saw an error (`clientsWithError`: a channel error or a closed
 * socket).
 */
export async function failoverOnce(cluster, lb, { perNode = 2, fast = false, drain = false, log = () => {} } = {}) {
  const { nodes } = cluster;
  const topic = `room:${uid('fo')}:chat`;
  const since = Date.now() - 1000;
  const clients = [];
  const sessionsBefore = await Promise.all(nodes.map((n) => metric(n, 'chorus_sessions_open')));
  // Channels of earlier topics may still run, and stop
  // limits.channel_empty_ms (1 s) after their clients left: the counts are
  // read once they hold still, and the home is the node whose count grows
  // when this topic's clients join.
  const channelCounts = () => Promise.all(nodes.map((n) => metric(n, 'chorus_channels')));
  let channelsBefore = await channelCounts();
  for (let i = 0; i < 10; i++) {
    await new Promise((r) => setTimeout(r, 1500));
    const now = await channelCounts();
    if (now.every((c, k) => c === channelsBefore[k])) break;
    channelsBefore = now;
  }
  for (let j = 0; j < perNode; j++) {
    for (let i = 0; i < nodes.length; i++) {
      const vsn = (i + j) % 2 ? '1.0.0' : '2.0.0';
      clients.push(client(lb, `n${i + 1}`, vsn, topic, `k${i + 1}-${j}`, since, { fast }));
    }
  }
  const result = { topic, clients: clients.length };
  try {
    await waitFor(
      () => clients.every((c) => c.joins > 0),
      20000,
      'every client subscribed',
    );
    const allKeys = clients.map((c) => c.key).sort().join();
    await waitFor(() => clients.every((c) => keysOf(c) === allKeys), 15000, 'presence lists every client');
    // Placement: perNode sessions on each node (HAProxy pinned them), and
    // one channel in the cluster.
    const sessions = await Promise.all(nodes.map((n) => metric(n, 'chorus_sessions_open')));
    result.sessionsPerNode = sessions.map((s, i) => s - sessionsBefore[i]);
    const channels = await Promise.all(nodes.map((n) => metric(n, 'chorus_channels')));
    result.channelsPerNode = channels.map((c, i) => c - channelsBefore[i]);
    const home = result.channelsPerNode.findIndex((c) => c === 1);
    if (home < 0 || result.channelsPerNode.filter((c) => c !== 0).length !== 1) {
      throw new Error(`not one new channel in the cluster: ${channelsBefore} -> ${channels}`);
    }
    result.home = home;
    log(`topic ${topic}: home node ${home + 1}, sessions per node ${result.sessionsPerNode}`);

    // Acked messages before the kill: three rounds from every client, the
    // last round not awaited (in flight at the kill).
    const acked = new Set();
    const send = (c, id) =>
      c.ch
        .send({ type: 'broadcast', event: 'chat', payload: { id, at: Date.now() } })
        .then((r) => {
          if (r === 'ok') acked.add(id);
          return r;
        })
        .catch(() => 'error');
    for (let round = 0; round < 2; round++) {
      const r = await Promise.all(clients.map((c) => send(c, `${c.key}-r${round}`)));
      if (!r.every((x) => x === 'ok')) throw new Error(`a send before the kill was not acked: ${r}`);
    }
    const inFlight = clients.map((c) => send(c, `${c.key}-r2`));
    await new Promise((r) => setTimeout(r, 5));

    // kill -9 of the home node.
    const killAt = Date.now();
    for (const c of clients) c.killAt = killAt;
    const victim = nodes[home];
    victim.child.kill(drain ? 'SIGTERM' : 'SIGKILL');
    result.killAt = killAt;
    result.mode = drain ? 'drain' : 'kill';
    // When every other node's membership (chorus_cluster_nodes) no longer
    // counts the lost node.
    const others = nodes.filter((_, i) => i !== home);
    const membersBefore = nodes.length;
    const dropped = waitFor(
      async () => {
        const counts = await Promise.all(others.map((n) => metric(n, 'chorus_cluster_nodes').catch(() => null)));
        return counts.every((c) => c === membersBefore - 1) && Date.now() - killAt;
      },
      60000,
      'the other nodes drop the lost node from their membership',
    ).catch(() => null);

    // A ticker: REST broadcasts to the surviving nodes every 100 ms, each
    // stamped with its send time; a client "receives again" at the first
    // live message sent after the kill.
    const survivors = nodes.filter((_, i) => i !== home);
    let tick = 0;
    const rest = [];
    result.rest = rest;
    let ticking = true;
    const pending = new Set();
    const ticker = setInterval(() => {
      if (!ticking) return;
      const node = survivors[tick % survivors.length];
      const id = `tick-${tick++}`;
      // Measurement only: not counted as acked (a 202 is not a store ack).
      const at = Date.now();
      const p = restBroadcast(node, [{ topic, event: 'chat', payload: { id, at } }])
        .then(({ status }) => rest.push(`${status}@${at - killAt}+${Date.now() - at}`))
        .catch((e) => rest.push(`${e.name}@${at - killAt}`));
      pending.add(p);
      p.finally(() => pending.delete(p));
    }, 100);
    try {
      await waitFor(() => clients.every((c) => c.firstAfter !== null), 60000, 'every client receives again');
    } finally {
      ticking = false;
      clearInterval(ticker);
      await Promise.allSettled([...pending, ...inFlight]);
    }
    const times = clients.map((c) => c.firstAfter - killAt).sort((a, b) => a - b);
    result.receiveAgainMs = times;
    result.maxMs = times[times.length - 1];
    result.p50Ms = times[Math.floor((times.length - 1) / 2)];
    result.victimClients = clients.filter((c) => c.server === `n${home + 1}`).map((c) => c.key);
    result.survivorMs = clients.filter((c) => c.server !== `n${home + 1}`).map((c) => c.firstAfter - killAt);
    result.victimMs = clients.filter((c) => c.server === `n${home + 1}`).map((c) => c.firstAfter - killAt);
    log(`every client receives again: p50 ${result.p50Ms} ms, max ${result.maxMs} ms`);

    // Every acked message reached every client (live or replayed on rejoin).
    result.acked = acked.size;
    await waitFor(
      () => clients.every((c) => [...acked].every((id) => c.got.has(id))),
      15000,
      'every acked message at every client',
    ).catch(() => {});
    result.missing = clients.map((c) => [...acked].filter((id) => !c.got.has(id)));
    // Presence rebuilt at the new home: every key, on every client.
    const allAfter = clients.map((c) => c.key).sort().join();
    await waitFor(() => clients.every((c) => keysOf(c) === allAfter), 15000, 'presence after the failover').catch(() => {});
    result.presenceOk = clients.every((c) => keysOf(c) === allAfter);
    result.presence = clients.map((c) => keysOf(c));
    const channelsAfter = await Promise.all(survivors.map((n) => metric(n, 'chorus_channels')));
    const before = channelsBefore.filter((_, i) => i !== home);
    result.channelsAfter = channelsAfter.map((c, i) => c - before[i]);
    result.joins = clients.map((c) => c.joins);
    result.membersDroppedMs = await dropped;
    result.clientsWithError = clients.filter((c) => c.errors > 0 || c.events.some((e) => e.startsWith('socket-closed'))).length;
    result.victimExit = await Promise.race([
      new Promise((resolve) => {
        if (victim.exited()) resolve(victim.exited());
        else victim.child.once('exit', (code, signal) => resolve({ code, signal }));
      }),
      new Promise((resolve) => setTimeout(() => resolve(null), 35000)),
    ]);
    result.events = Object.fromEntries(clients.map((c) => [c.key, c.events.join(' ')]));
    result.sessionsAfter = await Promise.all(survivors.map((n) => metric(n, 'chorus_sessions_open')));
    return result;
  } finally {
    await Promise.allSettled(clients.map((c) => c.close()));
  }
}
