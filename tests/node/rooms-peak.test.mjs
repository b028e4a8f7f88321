// Peak mode (docs/ROOMS.md, "Peak mode") with the real clients: a channel
// whose message rate goes over rooms.peak_enter_per_s tells its subscribers
// (`system` peak on / off), delivers broadcasts per period (every message to
// plain clients, `batch` frames to clients that opted in), merges presence
// diffs and counts reactions; below the threshold nothing changes.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import {
  RawClient,
  closeAll,
  phoenix,
  phoenixJoin,
  realtime,
  startNode,
  subscribe,
  uid,
  waitFor,
  metric,
} from './lib/node.mjs';

const ENTER_PER_S = 20;
const REACTION_INTERVAL_MS = 200;

let node;
before(async () => {
  node = await startNode({
    CHORUS_ROOMS_PEAK_ENTER_PER_S: String(ENTER_PER_S),
    CHORUS_ROOMS_PEAK_EXIT_PER_S: '5',
    CHORUS_ROOMS_PEAK_EXIT_AFTER_MS: '500',
    CHORUS_ROOMS_PEAK_BATCH_MS: '50',
    CHORUS_ROOMS_PEAK_PRESENCE_MERGE_MS: '1000',
    CHORUS_ROOMS_PEAK_REACTION_INTERVAL_MS: String(REACTION_INTERVAL_MS),
    // The publishers here send far faster than a normal client may.
    CHORUS_LIMITS_CLIENT_MESSAGES_PER_SECOND: '100000',
    CHORUS_LIMITS_CLIENT_BURST: '100000',
  });
});
after(async () => {
  await closeAll();
  await node?.stop();
});

/** A realtime-js subscriber recording broadcasts (`.got`) and `system` pushes (`.system`). */
async function realtimeWatcher(vsn, topic) {
  const client = realtime(node, vsn);
  const ch = client.channel(topic);
  ch.got = [];
  ch.system = [];
  ch.on('broadcast', { event: '*' }, (m) => ch.got.push({ event: m.event, payload: m.payload }));
  ch.on('system', {}, (p) => ch.system.push(p));
  await subscribe(ch);
  return ch;
}

/** A phoenix.js subscriber that joined with `config.chorus.batch: true`. */
async function batchWatcher(vsn, topic) {
  const socket = phoenix(node, vsn);
  const ch = socket.channel(`realtime:${topic}`, {
    config: {
      broadcast: { ack: false, self: false },
      presence: { key: '', enabled: false },
      private: false,
      chorus: { batch: true },
    },
  });
  ch.got = [];
  ch.system = [];
  ch.on('broadcast', (m) => ch.got.push({ event: m.event, payload: m.payload }));
  ch.on('system', (p) => ch.system.push(p));
  await phoenixJoin(ch);
  return ch;
}

/** A raw publisher joined to `realtime:<topic>`; `send(event, payload)` pushes a broadcast. */
async function publisher(vsn, topic, config = {}) {
  const c = await RawClient.open(node, vsn);
  const t = `realtime:${topic}`;
  assert.equal((await c.join(t, config)).status, 'ok');
  c.send = (event, payload) =>
    c.push(t, 'broadcast', { type: 'broadcast', event, payload }, { join_ref: c.joinRefs[t] });
  return c;
}

const isOn = (s) => s.extension === 'peak_mode' && s.peak === true;
const isOff = (s) => s.extension === 'peak_mode' && s.peak === false;

/** Waits for `system` peak on then off on every watcher; checks the payloads. */
async function onThenOff(watchers) {
  for (const w of watchers) {
    await waitFor(() => w.system.some(isOff), 10000, `${w.topic}: system peak off`);
    const peak = w.system.filter((s) => s.extension === 'peak_mode');
    assert.equal(peak.length, 2, JSON.stringify(peak));
    const [on, off] = peak;
    assert.deepEqual({ ...on, rate: 0 }, { extension: 'peak_mode', status: 'ok', peak: true, rate: 0, message: 'peak mode on' });
    assert.ok(on.rate > ENTER_PER_S, `entered at rate ${on.rate}`);
    assert.deepEqual({ ...off, rate: 0 }, { extension: 'peak_mode', status: 'ok', peak: false, rate: 0, message: 'peak mode off' });
    assert.ok(off.rate < 5, `left at rate ${off.rate}`);
  }
}

for (const vsn of ['1.0.0', '2.0.0']) {
  describe(`serializer ${vsn}`, () => {
    test('a burst: system peak on then off; plain clients get every message in order; batching clients get few batch frames', async () => {
      const topic = uid('peak');
      const plain = await realtimeWatcher(vsn, topic);
      const batching = await batchWatcher(vsn, topic);
      const pub = await publisher(vsn, topic);
      const N = 200;
      for (let i = 0; i < N; i++) pub.send('chat', { i, text: `m${i} 🎵` });
      const all = [...Array(N).keys()];

      await waitFor(() => plain.got.length >= N, 10000, 'the plain client receives every message');
      assert.deepEqual(plain.got.map((m) => m.payload.i), all);
      assert.ok(plain.got.every((m) => m.event === 'chat'));

      // The batching client: messages before peak mode one by one, then
      // `batch` frames carrying the rest, in order.
      const flat = () =>
        batching.got.flatMap((m) => (m.event === 'batch' ? m.payload.messages : [m]));
      await waitFor(() => flat().length >= N, 10000, 'the batching client receives every message');
      assert.deepEqual(flat().map((m) => m.payload.i), all);
      assert.ok(flat().every((m) => m.event === 'chat'));
      const batches = batching.got.filter((m) => m.event === 'batch');
      const batched = batches.reduce((n, b) => n + b.payload.messages.length, 0);
      assert.ok(batches.length >= 1, 'batch frames arrived');
      assert.ok(batched >= N - ENTER_PER_S - 1, `${batched} messages came batched`);
      assert.ok(batches.length < batched, `${batches.length} batch frames for ${batched} messages`);
      // Nothing before peak mode is batched: the first batch follows the
      // individual messages up to the one that crossed the threshold.
      assert.equal(batching.got.findIndex((m) => m.event === 'batch'), N - batched);

      await onThenOff([plain, batching]);
      // The publisher (self: false) never received its own messages.
      assert.deepEqual(pub.broadcasts(`realtime:${topic}`), []);
      assert.match(node.logs(), new RegExp(`channel realtime:${topic} entered peak mode at \\d+ messages/s`));
      assert.match(node.logs(), new RegExp(`channel realtime:${topic} left peak mode at \\d+ messages/s`));
    });
  });
}

test('acks and self delivery keep working in peak mode', async () => {
  const topic = uid('peak-ack');
  const watcher = await realtimeWatcher('2.0.0', topic);
  const pub = await publisher('1.0.0', topic, { broadcast: { ack: true, self: true } });
  const N = 60;
  const refs = [];
  for (let i = 0; i < N; i++) refs.push(pub.send('chat', { i }));
  for (const ref of refs) assert.equal((await pub.reply(ref)).status, 'ok', `ack of ref ${ref}`);
  const t = `realtime:${topic}`;
  await waitFor(() => pub.broadcasts(t).length >= N, 10000, 'the sender receives its own messages');
  assert.deepEqual(pub.broadcasts(t).map((m) => m.payload.payload.i), [...Array(N).keys()]);
  await waitFor(() => watcher.got.length >= N, 10000, 'the watcher receives every message');
  await onThenOff([watcher]);
});

test('presence diffs in peak mode are merged: fewer diffs, every key, a join then leave cancels out', async () => {
  const topic = uid('peak-presence');
  const t = `realtime:${topic}`;
  const observer = await RawClient.open(node, '2.0.0');
  assert.equal((await observer.join(t, { presence: { key: 'observer', enabled: true } })).status, 'ok');
  const rt = realtime(node, '1.0.0');
  const rtChannel = rt.channel(topic, { config: { presence: { key: 'rt' } } });
  rtChannel.on('presence', { event: 'sync' }, () => {});
  await subscribe(rtChannel);

  // Keep the channel in peak mode while presences change.
  const pub = await publisher('1.0.0', topic);
  let n = 0;
  const timer = setInterval(() => {
    for (let i = 0; i < 5; i++) pub.send('tick', { n: n++ });
  }, 20);
  try {
    await observer.waitMessage((m) => m.event === 'system' && m.payload.peak === true, 10000, 'peak on');
    const from = observer.messages.length;
    const track = async (key) => {
      const c = await RawClient.open(node, '1.0.0');
      assert.equal((await c.join(t, { presence: { key, enabled: true } })).status, 'ok');
      const ref = c.push(t, 'presence', { type: 'presence', event: 'track', payload: { key } }, { join_ref: c.joinRefs[t] });
      assert.equal((await c.reply(ref)).status, 'ok');
      return c;
    };
    // A ghost comes and goes within the period: it cancels out.
    const ghost = await track('ghost');
    const ref = ghost.push(t, 'presence', { type: 'presence', event: 'untrack' }, { join_ref: ghost.joinRefs[t] });
    assert.equal((await ghost.reply(ref)).status, 'ok');
    const keys = [...Array(10).keys()].map((i) => `k${i}`);
    await Promise.all(keys.map(track));

    const diffs = () => observer.messages.slice(from).filter((m) => m.event === 'presence_diff');
    const joined = () => new Set(diffs().flatMap((d) => Object.keys(d.payload.joins)));
    await waitFor(() => keys.every((k) => joined().has(k)), 10000, 'the merged diffs carry every key');
    assert.ok(diffs().length < keys.length, `${diffs().length} diffs for ${keys.length} tracks`);
    for (const d of diffs()) {
      assert.ok(!('ghost' in d.payload.joins) && !('ghost' in d.payload.leaves), `ghost in ${JSON.stringify(d.payload)}`);
    }
    // realtime-js applies the merged diffs to the same state.
    await waitFor(
      () => keys.every((k) => rtChannel.presenceState()[k]?.[0]?.key === k),
      10000,
      'realtime-js presence state has every key',
    );
    assert.equal(rtChannel.presenceState().ghost, undefined);
  } finally {
    clearInterval(timer);
  }
  await waitFor(() => observer.messages.some((m) => m.event === 'system' && m.payload.peak === false), 10000, 'peak off');
});

test('reactions in peak mode arrive as reaction_counts summing to the number sent', async () => {
  const topic = `room:${uid('r')}:reactions`;
  const watcher = await realtimeWatcher('2.0.0', topic);
  const pub = await publisher('2.0.0', topic);
  const N = 150;
  for (let i = 0; i < N; i++) pub.send('reaction', { emoji: i % 3 === 0 ? '❤️' : '🔥' });

  const tally = () => {
    const sum = { '❤️': 0, '🔥': 0 };
    for (const m of watcher.got) {
      if (m.event === 'reaction') sum[m.payload.emoji] += 1;
      if (m.event === 'reaction_counts') {
        for (const [k, v] of Object.entries(m.payload.counts)) sum[k] = (sum[k] ?? 0) + v;
      }
    }
    return sum;
  };
  await waitFor(() => tally()['❤️'] + tally()['🔥'] >= N, 10000, 'every reaction is delivered or counted');
  assert.deepEqual(tally(), { '❤️': N / 3, '🔥': (2 * N) / 3 });
  const counts = watcher.got.filter((m) => m.event === 'reaction_counts');
  assert.ok(counts.length >= 1, 'reaction_counts arrived');
  assert.ok(counts.every((m) => m.payload.interval_ms === REACTION_INTERVAL_MS));
  assert.ok(watcher.got.length < N, `${watcher.got.length} frames for ${N} reactions`);
  await onThenOff([watcher]);
  // The sender (self: false) gets no counts of its own reactions only.
  assert.deepEqual(pub.broadcasts(`realtime:${topic}`), []);
});

test('below the threshold nothing changes', async () => {
  const entered = await metric(node, 'chorus_peak_entered_total');
  const topic = uid('calm');
  const plain = await realtimeWatcher('1.0.0', topic);
  const batching = await batchWatcher('2.0.0', topic);
  const pub = await publisher('2.0.0', topic);
  const N = ENTER_PER_S;
  for (let i = 0; i < N; i++) pub.send('chat', { i });
  await waitFor(() => plain.got.length >= N && batching.got.length >= N, 10000, 'both receive every message');
  // A `system` push would have come before the messages it announced.
  assert.deepEqual(plain.system, []);
  assert.deepEqual(batching.system, []);
  for (const w of [plain, batching]) {
    assert.deepEqual(w.got, [...Array(N).keys()].map((i) => ({ event: 'chat', payload: { i } })));
  }
  assert.equal(await metric(node, 'chorus_peak_entered_total'), entered);
});

test('/metrics shows the transitions', async () => {
  // Every test above waited for its channel to leave peak mode.
  const entered = await metric(node, 'chorus_peak_entered_total');
  assert.ok(entered >= 5, `entered ${entered} times`);
  assert.equal(await metric(node, 'chorus_peak_left_total'), entered);
  assert.equal(await metric(node, 'chorus_peak_channels'), 0);
});
