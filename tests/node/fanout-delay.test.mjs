// Large fan-outs share their writes (docs/CONFIGURATION.md,
// `node.fanout_write_delay_ms` / `node.fanout_write_delay_sockets`): a
// broadcast to at least that many sockets wakes their writers that long
// later, so the frames of the broadcasts that follow meanwhile go out in the
// same write; a smaller room is written at once. Here the node runs with a
// long delay (400 ms) and a threshold of 3 sockets (counted over both
// serializers: the large room mixes 1.0.0 and 2.0.0 clients), so the behaviour shows
// with realtime-js clients: the large room's message arrives no earlier than
// the delay after it was sent (a lower bound, which a loaded machine cannot
// break), every fan-out that was delayed is counted, the small room's is not,
// frames sent during the delay reach the clients complete and in order, and
// they shared writes (`chorus_socket_writes_total` grew by less than
// `chorus_messages_out_total`).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { assertHealthy, closeAll, metric, realtime, startNode, subscribe, uid, waitFor } from './lib/node.mjs';

const DELAY_MS = 400;
const LARGE = 3;

let node;
before(async () => {
  node = await startNode({
    CHORUS_NODE_FANOUT_WRITE_DELAY_MS: String(DELAY_MS),
    CHORUS_NODE_FANOUT_WRITE_DELAY_SOCKETS: String(LARGE),
  });
});
after(async () => {
  await closeAll();
  await node?.stop();
});

/** A realtime-js channel on `topic` that stamps each broadcast's arrival. */
async function listener(topic, vsn = '2.0.0') {
  const client = realtime(node, vsn);
  const ch = client.channel(topic, { config: { broadcast: { self: false } } });
  ch.got = [];
  ch.on('broadcast', { event: '*' }, (msg) => ch.got.push({ at: performance.now(), payload: msg.payload }));
  await subscribe(ch);
  return ch;
}

describe('node.fanout_write_delay_ms', () => {
  test(`a fan-out to ${LARGE} sockets is written ${DELAY_MS} ms late and counted; a smaller one at once`, async () => {
    const large = uid('large');
    const small = uid('small');
    // Large room: a sender and LARGE listeners (the sender does not get its
    // own message: the fan-out goes to LARGE sockets). Small room: a sender
    // and LARGE - 1 listeners.
    const largeListeners = await Promise.all(
      Array.from({ length: LARGE }, (_, i) => listener(large, i % 2 ? '1.0.0' : '2.0.0')),
    );
    const smallListeners = await Promise.all(Array.from({ length: LARGE - 1 }, () => listener(small)));
    const sender = realtime(node, '2.0.0');
    const toLarge = sender.channel(large, { config: { broadcast: { self: false, ack: true } } });
    const toSmall = sender.channel(small, { config: { broadcast: { self: false, ack: true } } });
    await subscribe(toLarge);
    await subscribe(toSmall);

    const before = await metric(node, 'chorus_fanouts_delayed_total');
    assert.equal(await toSmall.send({ type: 'broadcast', event: 'chat', payload: { n: 0 } }), 'ok');
    await waitFor(() => smallListeners.every((ch) => ch.got.length === 1), 5000, 'the small room gets its message');
    assert.equal(
      await metric(node, 'chorus_fanouts_delayed_total'),
      before,
      'a fan-out to fewer sockets than node.fanout_write_delay_sockets is not delayed',
    );

    // Five messages in quick succession to the large room: the first one's
    // writers wake DELAY_MS later, and the next ones (queued meanwhile) go
    // out with it.
    const framesBefore = await metric(node, 'chorus_messages_out_total');
    const writesBefore = await metric(node, 'chorus_socket_writes_total');
    const sentAt = performance.now();
    for (let n = 1; n <= 5; n++) {
      assert.equal(await toLarge.send({ type: 'broadcast', event: 'chat', payload: { n } }), 'ok');
    }
    await waitFor(() => largeListeners.every((ch) => ch.got.length === 5), 10000, 'the large room gets all five');
    for (const ch of largeListeners) {
      assert.deepEqual(
        ch.got.map((g) => g.payload.n),
        [1, 2, 3, 4, 5],
        'complete and in order',
      );
      const waited = ch.got[0].at - sentAt;
      assert.ok(waited >= DELAY_MS - 5, `the first message arrived ${waited.toFixed(1)} ms after it was sent, before the ${DELAY_MS} ms delay`);
    }
    // The first broadcast found the LARGE writers idle and delayed them;
    // the next ones found them still waiting (nothing more to delay).
    const delayed = (await metric(node, 'chorus_fanouts_delayed_total')) - before;
    assert.ok(delayed >= 1 && delayed <= 5, `delayed fan-outs counted: ${delayed}`);
    // 5 × LARGE broadcast frames and the sender's 5 acks (and the scrapes'
    // own replies, one frame and one write each): the broadcasts held back
    // went out several to a write.
    const frames = (await metric(node, 'chorus_messages_out_total')) - framesBefore;
    const writes = (await metric(node, 'chorus_socket_writes_total')) - writesBefore;
    assert.ok(frames >= 5 * LARGE + 5, `frames out: ${frames}`);
    assert.ok(writes > 0 && writes < frames, `${writes} socket writes for ${frames} frames: no write carried two`);
    await assertHealthy(node);
  });
});
