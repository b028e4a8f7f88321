// Regression tests for the holes issue 11 lists, with the real npm clients
// against a real node: a room flooded with 80 broadcasts of 240 KB keeps
// working and does not spin; a slow HTTP head gets 408 within the head
// deadline; a join/leave flood over fresh topics is refused by the channel
// caps while other sockets are unaffected; a huge presence key or huge metas
// are refused with the key named; a failed store reaches the sender even
// without `ack`; a retried client message id is acknowledged once more but
// stored and delivered once.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { closeAll, metric, RawClient, realtime, startNode, subscribe, uid, waitFor } from './lib/node.mjs';

after(async () => {
  await closeAll();
});

/** CPU seconds (user + system) the node's OS process has used so far. */
function cpuSeconds(node) {
  const stat = readFileSync(`/proc/${node.child.pid}/stat`, 'utf8');
  // Fields after the command name (which may hold spaces) in parentheses.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** The node's CPU use (in cores) over `ms` of quiet. */
async function cpuOver(node, ms) {
  const t0 = Date.now();
  const c0 = cpuSeconds(node);
  await new Promise((r) => setTimeout(r, ms));
  return (cpuSeconds(node) - c0) / ((Date.now() - t0) / 1000);
}

/** Every stored message of `topic` over REST, paging with `before=`. */
async function allHistory(node, topic) {
  const all = [];
  let before = '';
  for (let page = 0; page < 100; page++) {
    const q = before ? `?limit=100&before=${before}` : '?limit=100';
    const res = await fetch(`${node.http}/realtime/v1/api/channels/${encodeURIComponent(topic)}/messages${q}`, {
      headers: { apikey: 'anon' },
      signal: AbortSignal.timeout(10000),
    });
    assert.equal(res.status, 200, `history page ${page}`);
    const { messages } = await res.json();
    if (messages.length === 0) break;
    all.push(...messages);
    before = messages[messages.length - 1].id;
  }
  return all;
}

describe('a room under big payloads, store failures and retries', () => {
  let node;
  let dataDir;
  before(async () => {
    node = await startNode();
    dataDir = node.dataDir;
  });
  after(async () => {
    await node?.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  test('80 broadcasts of 240 KB on room:<id>:chat: all acked and stored, later joins answered, no spinning, also after a restart', async () => {
    const room = uid('big');
    const topic = `room:${room}:chat`;
    const sender = realtime(node, '1.0.0');
    const ch = sender.channel(topic, { config: { broadcast: { ack: true } } });
    await subscribe(ch);
    const watcher = realtime(node, '2.0.0');
    const seen = watcher.channel(topic);
    let delivered = 0;
    seen.on('broadcast', { event: 'big' }, () => delivered++);
    await subscribe(seen);
    const filler = 'x'.repeat(240 * 1024);
    const results = await Promise.all(
      Array.from({ length: 80 }, (_, i) => ch.send({ type: 'broadcast', event: 'big', payload: { i, filler } }, { timeout: 30000 })),
    );
    assert.deepEqual(results, Array(80).fill('ok'), 'every broadcast acked');
    await waitFor(() => delivered === 80, 20000, 'all 80 delivered to the other member');
    // Later joins are answered, by both clients.
    const late = realtime(node, '2.0.0');
    await subscribe(late.channel(topic), 5000);
    const stored = await allHistory(node, topic);
    assert.equal(stored.length, 80, 'every acked message is in the REST history');
    assert.deepEqual(new Set(stored.map((m) => m.payload.i)).size, 80);
    assert.ok((await cpuOver(node, 2000)) < 0.5, 'the node is quiet after the burst');
    assert.equal(await metric(node, 'chorus_restarts_total'), 0, 'no channel crashed');

    // A node restarted on the same data refills the room's history from
    // storage: no crash loop, joins answered.
    await closeAll();
    await node.stopWith('SIGTERM'); // keeps the data directory
    node = await startNode({ CHORUS_DATA_DIR: dataDir });
    const again = realtime(node, '2.0.0');
    const back = again.channel(topic, { config: { broadcast: { ack: true } } });
    await subscribe(back, 5000);
    assert.equal(await back.send({ type: 'broadcast', event: 'after', payload: { ok: true } }), 'ok');
    assert.ok((await cpuOver(node, 2000)) < 0.5, 'the restarted node is quiet');
    assert.equal(await metric(node, 'chorus_restarts_total'), 0, 'no channel crashed after the restart');
    assert.equal((await allHistory(node, topic)).length, 81);
  });

  test('a failed store reaches the sender without ack as a system push naming the event; others see nothing', async () => {
    const topic = `room:${uid('locked')}:chat`;
    const sender = realtime(node, '2.0.0');
    const ch = sender.channel(topic);
    const system = [];
    ch.on('system', {}, (m) => system.push(m));
    await subscribe(ch);
    const other = realtime(node, '1.0.0');
    const och = other.channel(topic);
    const otherGot = [];
    och.on('broadcast', { event: '*' }, (m) => otherGot.push(m));
    och.on('system', {}, (m) => otherGot.push(m));
    await subscribe(och);

    // Another process holds SQLite's write lock: the node's append fails
    // after its busy timeout.
    const lock = spawn('sqlite3', [path.join(dataDir, 'chorus.db')], { stdio: ['pipe', 'pipe', 'pipe'] });
    let lockOut = '';
    lock.stdout.on('data', (d) => (lockOut += d));
    lock.stdin.write("BEGIN IMMEDIATE; SELECT 'locked';\n");
    try {
      await waitFor(() => lockOut.includes('locked'), 5000, 'sqlite3 holding the write lock');
      assert.equal(await ch.send({ type: 'broadcast', event: 'message', payload: { text: 'lost?', msg_id: 'm-1' } }), 'ok');
      const m = await waitFor(() => system[0], 10000, 'the system push');
      assert.equal(m.status, 'error');
      assert.equal(m.event, 'message');
      assert.equal(m.msg_id, 'm-1');
      assert.equal(m.channel, `realtime:${topic}`);
      assert.match(m.message, /not stored.*locked/);
    } finally {
      lock.stdin.end('ROLLBACK;\n');
      await new Promise((r) => lock.on('exit', r));
    }
    // The same id is retried once the store works: stored and delivered.
    assert.equal(await ch.send({ type: 'broadcast', event: 'message', payload: { text: 'retried', msg_id: 'm-1' } }), 'ok');
    await waitFor(() => otherGot.length === 1, 5000, 'the retry delivered');
    assert.equal(otherGot[0].payload.text, 'retried');
    assert.equal((await allHistory(node, topic)).length, 1);
    assert.ok((await metric(node, 'chorus_store_failures_total')) >= 1);
  });

  test('a retried msg_id from the same user is acked again, stored and delivered once', async () => {
    const topic = `room:${uid('dedupe')}:chat`;
    const config = { broadcast: { ack: true }, presence: { key: 'ann' } };
    const a = realtime(node, '2.0.0');
    const ch = a.channel(topic, { config });
    await subscribe(ch);
    const reader = realtime(node, '1.0.0');
    const rch = reader.channel(topic);
    const got = [];
    rch.on('broadcast', { event: '*' }, (m) => got.push(m.payload));
    await subscribe(rch);

    const msg = { type: 'broadcast', event: 'message', payload: { text: 'hello', msg_id: 'c-1' } };
    assert.equal(await ch.send(msg), 'ok');
    assert.equal(await ch.send(msg), 'ok', 'the retry is acknowledged');
    // After a reconnect (a new socket), the same user retries again.
    const a2 = realtime(node, '1.0.0');
    const ch2 = a2.channel(topic, { config });
    await subscribe(ch2);
    assert.equal(await ch2.send(msg), 'ok');
    // Another user may use the same id.
    const b = realtime(node, '2.0.0');
    const bch = b.channel(topic, { config: { broadcast: { ack: true }, presence: { key: 'bob' } } });
    await subscribe(bch);
    assert.equal(await bch.send({ ...msg, payload: { text: 'bob', msg_id: 'c-1' } }), 'ok');
    await waitFor(() => got.length === 2, 5000, 'two deliveries');
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(got.map((p) => p.text), ['hello', 'bob'], 'the retries were not delivered again');
    assert.deepEqual((await allHistory(node, topic)).map((m) => m.payload.text), ['bob', 'hello']);
    assert.equal(await metric(node, 'chorus_duplicate_messages_total'), 2);
    // A msg_id that is not a short string is refused with the reason.
    const raw = await RawClient.open(node, '1.0.0');
    const realTopic = `realtime:${topic}`;
    assert.equal((await raw.join(realTopic, { broadcast: { ack: true } })).status, 'ok');
    const ref = raw.push(realTopic, 'broadcast', { type: 'broadcast', event: 'message', payload: { msg_id: 42 } }, { join_ref: raw.joinRefs[realTopic] });
    const r = await raw.reply(ref);
    assert.equal(r.status, 'error');
    assert.match(r.response.reason, /msg_id must be a string/);
  });
});

describe('caps on channels, slow heads and presence sizes', () => {
  let node;
  before(async () => {
    node = await startNode({
      CHORUS_LIMITS_MAX_CHANNELS: '40',
      CHORUS_LIMITS_CHANNEL_CREATIONS_PER_SECOND: '5',
      CHORUS_LIMITS_HTTP_HEAD_TIMEOUT_MS: '3000',
      CHORUS_LIMITS_PRESENCE_BYTES: '65536',
      CHORUS_LIMITS_PRESENCE_KEY_BYTES: '64',
    });
  });
  after(async () => {
    await node?.stop();
  });

  test('a slow HTTP head (a byte every 2 s) gets 408 within the head deadline', async () => {
    const sock = net.connect(node.port, '127.0.0.1');
    await new Promise((r) => sock.once('connect', r));
    const started = Date.now();
    let answer = '';
    sock.on('data', (d) => (answer += d));
    const closed = new Promise((r) => sock.once('close', r));
    sock.write('GET /healthz HTTP/1.1\r\n');
    const drip = setInterval(() => sock.write('X'), 2000);
    try {
      await Promise.race([closed, new Promise((_, j) => setTimeout(() => j(new Error('still open after 8 s')), 8000))]);
    } finally {
      clearInterval(drip);
      sock.destroy();
    }
    const took = Date.now() - started;
    assert.match(answer, /^HTTP\/1\.1 408/, answer);
    assert.match(answer, /limits\.http_head_timeout_ms/);
    assert.ok(took >= 2500 && took < 5000, `closed after ${took} ms (deadline 3000)`);
  });

  test('a huge presence key and huge metas are refused with the key named; the channel keeps serving', async () => {
    const topic = `realtime:${uid('presence')}`;
    const raw = await RawClient.open(node, '1.0.0');
    const long = await raw.join(topic, { presence: { key: 'k'.repeat(10_000), enabled: true } });
    assert.equal(long.status, 'error');
    assert.match(long.response.reason, /limits\.presence_key_bytes/);

    // Metas of 20 KB from several sockets: the channel holds at most
    // limits.presence_bytes (64 KiB) of them.
    const meta = { blob: 'm'.repeat(20_000) };
    const statuses = [];
    for (let i = 0; i < 5; i++) {
      const s = await RawClient.open(node, '2.0.0');
      assert.equal((await s.join(topic, { presence: { key: `u${i}`, enabled: true } })).status, 'ok');
      const ref = s.push(topic, 'presence', { type: 'presence', event: 'track', payload: meta }, { join_ref: s.joinRefs[topic] });
      statuses.push(await s.reply(ref));
    }
    assert.deepEqual(statuses.slice(0, 3).map((r) => r.status), ['ok', 'ok', 'ok']);
    const refused = statuses.slice(3);
    for (const r of refused) {
      assert.equal(r.status, 'error');
      assert.match(r.response.reason, /^presence_full.*limits\.presence_bytes/);
    }
    // A later member joins and sees the three accepted presences.
    const viewer = realtime(node, '2.0.0');
    const vch = viewer.channel(topic.slice('realtime:'.length));
    vch.on('presence', { event: 'sync' }, () => {});
    await subscribe(vch);
    await waitFor(() => Object.keys(vch.presenceState()).length === 3, 5000, 'three presences');
  });

  test('a join/leave flood over fresh topics is refused by the channel caps; other sockets are unaffected', async () => {
    // A bystander in a room that runs before the flood.
    const topic = `room:${uid('calm')}:chat`;
    const bystander = realtime(node, '2.0.0');
    const bch = bystander.channel(topic, { config: { broadcast: { ack: true, self: true } } });
    const got = [];
    bch.on('broadcast', { event: '*' }, (m) => got.push(m.payload));
    await subscribe(bch);
    const before = await metric(node, 'chorus_channels');

    // One socket joins and leaves 150 fresh topics as fast as it can.
    const flood = await RawClient.open(node, '1.0.0');
    const replies = [];
    const started = Date.now();
    for (let i = 0; i < 150; i++) {
      const t = `realtime:flood-${uid()}-${i}`;
      const ref = flood.push(t, 'phx_join', { config: {} }, { join_ref: String(i) });
      replies.push(flood.reply(ref, 10000));
      flood.push(t, 'phx_leave', {}, { join_ref: String(i) });
    }
    const answers = await Promise.all(replies);
    const seconds = (Date.now() - started) / 1000;
    const ok = answers.filter((a) => a.status === 'ok').length;
    const byRate = answers.filter((a) => /^channel_creation_rate_limited.*\(limits\.channel_creations_per_second\)/.test(a.response?.reason));
    assert.ok(ok <= 5 + Math.ceil(seconds * 5) + 1, `${ok} channels started in ${seconds} s at 5/s`);
    assert.ok(byRate.length >= 100, `${byRate.length} joins refused by the creation rate`);
    assert.equal(ok + answers.filter((a) => a.status === 'error').length, 150, 'every join answered');

    // Many sockets together cannot pass the node's cap.
    const sockets = await Promise.all(Array.from({ length: 12 }, () => RawClient.open(node, '2.0.0')));
    const full = [];
    await Promise.all(
      sockets.map(async (s, k) => {
        for (let i = 0; i < 5; i++) {
          const r = await s.join(`realtime:cap-${uid()}-${k}-${i}`);
          if (r.status === 'error') full.push(r.response.reason);
        }
      }),
    );
    assert.ok(full.some((r) => /^too_many_channels.*limits\.max_channels = 40/.test(r)), full.join('\n'));
    assert.ok((await metric(node, 'chorus_channels')) <= 40, 'the node runs at most limits.max_channels');
    assert.ok((await metric(node, 'chorus_channel_starts_refused_total')) >= byRate.length);

    // The bystander's room still works, and a join of a running channel is
    // not refused by either cap.
    assert.equal(await bch.send({ type: 'broadcast', event: 'still', payload: { n: 1 } }), 'ok');
    await waitFor(() => got.length === 1, 5000, 'the bystander hears itself');
    const joiner = realtime(node, '1.0.0');
    await subscribe(joiner.channel(topic));
    assert.ok(before >= 1);
  });
});
