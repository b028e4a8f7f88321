// The client kit (clients/kit, compiled by scripts/lib.sh build_clients)
// against a real node with the real @supabase/realtime-js: joining a room's
// three lanes, clock sync, playback publish and follow (late joiner
// included), chat with acknowledgements, refusals with the node's reason,
// replayed history, batch frames in peak mode, reactions and
// reaction_counts, selective presence and the green dot.

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { closeAll, realtime, REPO, startNode, uid, waitFor } from './lib/node.mjs';

const KIT = path.join(REPO, 'clients/kit/dist/index.js');
if (!existsSync(KIT)) throw new Error(`chorus-kit not built at ${KIT} (scripts/lib.sh build_clients)`);
const { Room, PushError, Clock, bestSample, clockSample, positionAt, Tally } = await import(KIT);

async function setHost(node, room, user) {
  const res = await fetch(`${node.http}/realtime/v1/api/rooms/${room}`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json', apikey: 'anon' },
    body: JSON.stringify({ host: user }),
  });
  assert.equal(res.status, 200, await res.text());
}

/** A joined room for `user` on its own realtime-js client. */
async function joined(node, id, user, options = {}) {
  const room = new Room(realtime(node, options.vsn ?? '2.0.0'), { id, user, ...options });
  await room.join();
  return room;
}

describe('pure helpers', () => {
  test('clock samples: NTP offset and round trip; the fastest sample wins', () => {
    // Server 100 ms ahead, 10 ms each way, 2 ms in the server.
    const s = clockSample({ t0: 1000, server_receive_ms: 1110, server_send_ms: 1112 }, 1022);
    assert.deepEqual(s, { offset: 100, rtt: 20 });
    assert.deepEqual(bestSample([{ offset: 5, rtt: 30 }, { offset: 1, rtt: 4 }, { offset: 9, rtt: 8 }]), { offset: 1, rtt: 4 });
    assert.throws(() => bestSample([]));
    const clock = new Clock(() => 500);
    clock.offset = 20;
    assert.equal(clock.serverNow(), 520);
  });

  test('positions move only while playing, never below zero', () => {
    const state = { track: 't', position_ms: 1000, playing: true, taken_at_ms: 5000 };
    assert.equal(positionAt(state, 5250), 1250);
    assert.equal(positionAt({ ...state, playing: false }, 9000), 1000);
    assert.equal(positionAt({ ...state, position_ms: 0 }, 4000), 0);
  });

  test('a tally folds single reactions and aggregated counts', () => {
    const t = new Tally();
    t.reaction({ emoji: '🔥' });
    t.reaction({ emoji: '🔥' });
    assert.deepEqual(t.aggregated({ counts: { '🔥': 3, '❤️': 2, bad: -1, worse: 'x' }, aggregated: true }), { '🔥': 3, '❤️': 2 });
    t.reaction({});
    assert.deepEqual(t.counts, { '🔥': 5, '❤️': 2, other: 1 });
  });
});

describe('a room through the kit', () => {
  let node;
  before(async () => {
    node = await startNode();
  });
  after(async () => {
    await closeAll();
    await node?.stop();
  });

  test('clock sync against the node: small round trip, offset near zero on one machine', async () => {
    const room = await joined(node, uid('c'), 'ana', { clockSamples: 0 });
    const best = await room.syncClock({ samples: 5 });
    assert.ok(best.rtt >= 0 && best.rtt < 1000, JSON.stringify(best));
    // Same machine, same clock: the estimate is within the round trip.
    assert.ok(Math.abs(room.clock.offset) <= Math.max(best.rtt, 5), JSON.stringify(best));
  });

  for (const vsn of ['1.0.0', '2.0.0']) {
    test(`${vsn}: the host's playback reaches listeners, a late joiner gets it retained, positions agree`, async () => {
      const id = uid('p');
      await setHost(node, id, 'host');
      const host = await joined(node, id, 'host', { vsn });
      const early = await joined(node, id, 'early', { vsn });
      const got = [];
      early.on('playback', (e) => got.push(e));
      const sent = await host.publishPlayback({ track: 'demo:clicks', position_ms: 1500, playing: true });
      assert.equal(typeof sent.taken_at_ms, 'number');
      await waitFor(() => got.length === 1, 5000, 'the playback broadcast');
      assert.equal(got[0].retained, false);
      assert.deepEqual(got[0].state, sent);

      const late = await joined(node, id, 'late', { vsn });
      await waitFor(() => late.playback !== null, 5000, 'the retained playback');
      assert.deepEqual(late.playback, sent);
      // Everyone computes the same position from the server clock.
      const positions = [host.position(), early.position(), late.position()];
      const spread = Math.max(...positions) - Math.min(...positions);
      assert.ok(spread < 100, `positions ${positions} differ by ${spread} ms`);
      assert.ok(positions[0] >= 1500);

      // Only the host may publish.
      await assert.rejects(early.publishPlayback({ track: 'x', position_ms: 0, playing: false }), (e) => {
        assert.ok(e instanceof PushError);
        assert.equal(e.reason, 'not_room_host');
        return true;
      });
      await assert.rejects(host.publishPlayback({ track: '', position_ms: 0, playing: true }), /track must be/);
    });
  }

  test('chat: delivered to everyone (sender included), stored, replayed to a joiner that asks', async () => {
    const id = uid('m');
    const ana = await joined(node, id, 'ana');
    const bo = await joined(node, id, 'bo');
    const seen = { ana: [], bo: [] };
    ana.on('chat', (m) => seen.ana.push(m));
    bo.on('chat', (m) => seen.bo.push(m));
    await ana.say({ text: 'hola' });
    await bo.say({ text: 'qué tal' }, 'message');
    await waitFor(() => seen.ana.length === 2 && seen.bo.length === 2, 5000, 'both messages on both clients');
    assert.deepEqual(seen.bo.map((m) => m.payload.text), ['hola', 'qué tal']);
    assert.deepEqual((await ana.history(10)).map((m) => m.payload.text), ['qué tal', 'hola']);

    const cy = new Room(realtime(node, '2.0.0'), { id, user: 'cy', history: 10 });
    const replayed = [];
    cy.on('chat', (m) => replayed.push(m));
    await cy.join();
    await waitFor(() => replayed.length === 2, 5000, 'the replayed history');
    assert.deepEqual(replayed.map((m) => [m.payload.text, m.replayed]), [['hola', true], ['qué tal', true]]);
  });

  test('a refused chat message rejects with the node reason', async () => {
    const room = await joined(node, uid('r'), 'ana');
    await assert.rejects(room.say({ text: 'x'.repeat(300 * 1024) }), (e) => {
      assert.ok(e instanceof PushError, String(e));
      assert.match(e.reason, /payload_size_exceeded/);
      return true;
    });
  });

  test('reactions: counted on every client, the sender included', async () => {
    const id = uid('x');
    const ana = await joined(node, id, 'ana');
    const bo = await joined(node, id, 'bo');
    await ana.react('🔥');
    await ana.react('🔥');
    await bo.react('❤️');
    const counted = (room) => {
      const c = room.reactionCounts();
      return c['🔥'] === 2 && c['❤️'] === 1 && Object.keys(c).length === 2;
    };
    await waitFor(() => counted(bo), 5000, 'counts on bo');
    await waitFor(() => counted(ana), 5000, 'counts on ana');
  });

  test('selective presence and the green dot', async () => {
    const id = uid('s');
    const ana = await joined(node, id, 'ana');
    await joined(node, id, 'bo');
    await joined(node, id, 'cy');
    await waitFor(() => ana.members().length === 3, 5000, 'everyone in the full presence');
    assert.equal(await ana.watchPresence(['bo']), 1);
    await waitFor(() => ana.members().map((m) => m.user).join() === 'bo', 5000, 'only bo after subscribing');
    assert.equal(await ana.watchPresence(['cy'], ['bo']), 1);
    await waitFor(() => ana.members().map((m) => m.user).join() === 'cy', 5000, 'only cy after scrolling');
    await assert.rejects(ana.watchPresence('bo'), PushError);
    assert.deepEqual(await ana.online(['bo', 'nobody']), { bo: true, nobody: false });
  });
});

describe('a room in peak mode through the kit', () => {
  let node;
  before(async () => {
    node = await startNode({
      CHORUS_ROOMS_PEAK_ENTER_PER_S: '10',
      CHORUS_ROOMS_PEAK_EXIT_PER_S: '5',
      CHORUS_LIMITS_CLIENT_MESSAGES_PER_SECOND: '1000',
      CHORUS_LIMITS_CLIENT_BURST: '1000',
    });
  });
  after(async () => {
    await closeAll();
    await node?.stop();
  });

  test('batch frames arrive unpacked, in order; reactions arrive as counts; the peak notice is seen', async () => {
    const id = uid('k');
    const host = await joined(node, id, 'host');
    const fan = await joined(node, id, 'fan');
    const peaks = [];
    fan.on('peak', (p) => peaks.push(p));
    const texts = [];
    fan.on('chat', (m) => texts.push(m.payload.i));
    // The frames themselves (what the kit unpacks): some must be batches.
    let batches = 0;
    fan.chatLane.on('broadcast', { event: 'batch' }, () => batches++);
    const n = 60;
    await Promise.all(Array.from({ length: n }, (_, i) => host.say({ i })));
    await waitFor(() => texts.length === n, 10000, `${n} chat messages`);
    assert.deepEqual(texts, [...Array(n).keys()]);
    assert.ok(batches > 0, 'no batch frame: the kit did not opt in (config.chorus.batch)');
    await waitFor(() => peaks.some((p) => p.peak), 5000, 'the peak notice');
    for (let i = 0; i < 40; i++) host.react(i % 2 ? '🔥' : '🎉');
    await waitFor(() => (fan.reactionCounts()['🔥'] ?? 0) === 20 && (fan.reactionCounts()['🎉'] ?? 0) === 20, 10000, 'all reactions counted');
  });
});
