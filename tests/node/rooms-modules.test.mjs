// Process modules (docs/ROOMS.md, "Process modules"; src/modules/): the
// shipped `moderation` module screens every message on a room's chat lane
// before it is stored and delivered. `mask` replaces blocked words with `*`
// for everyone and in storage; `reject` refuses the message (the publisher
// gets `moderated: ...`, nobody receives or stores it). Clean messages and
// other topics pass untouched. A crashed module is restarted by the
// `modules` supervisor; meanwhile `modules.fail_open` decides. An unknown
// module name stops the node naming `modules.enabled`.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import {
  closeAll,
  RawClient,
  realtime,
  recordingChannel,
  startNode,
  subscribe,
  uid,
  VSNS,
  waitFor,
} from './lib/node.mjs';

const REJECT_REASON = 'moderated: contains a blocked word';

async function metric(node, name) {
  const res = await fetch(`${node.http}/metrics`, { signal: AbortSignal.timeout(5000) });
  const text = await res.text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  assert.ok(line, `metric ${name} missing`);
  return Number(line.split(' ')[1]);
}

/** Stored messages of `topic`, newest first. */
async function stored(node, topic) {
  const res = await fetch(
    `${node.http}/realtime/v1/api/channels/${encodeURIComponent(topic)}/messages?limit=100`,
    { headers: { apikey: 'anon' }, signal: AbortSignal.timeout(5000) },
  );
  assert.equal(res.status, 200);
  return (await res.json()).messages;
}

/** A realtime-js sender (ack on) and a recording receiver on `topic`. */
async function pair(node, vsn, topic) {
  const sender = realtime(node, vsn).channel(topic, { config: { broadcast: { ack: true } } });
  const receiver = recordingChannel(realtime(node, vsn), topic);
  await subscribe(sender);
  await subscribe(receiver);
  return { sender, receiver };
}

/** A raw client joined to `topic` with ack on; `send` resolves with the reply. */
async function rawSender(node, vsn, topic) {
  const c = await RawClient.open(node, vsn);
  const r = await c.join(topic, { broadcast: { ack: true, self: false } });
  assert.equal(r.status, 'ok', JSON.stringify(r));
  c.send = (event, payload) =>
    c.reply(c.push(topic, 'broadcast', { type: 'broadcast', event, payload }, { join_ref: c.joinRefs[topic] }));
  return c;
}

describe('moderation, action mask (fail open)', () => {
  let node;
  before(async () => {
    node = await startNode({
      CHORUS_MODULES_ENABLED: 'moderation',
      CHORUS_MODULES_MODERATION_WORDS: 'badword, Ärger',
      // Generous, so that a loaded machine cannot turn a verdict into a timeout.
      CHORUS_MODULES_TIMEOUT_MS: '2000',
      CHORUS_NODE_FAULT_INJECTION: 'true',
    });
  });
  after(async () => {
    await closeAll();
    await node?.stop();
  });

  for (const vsn of VSNS) {
    test(`${vsn}: a blocked word reaches the other client masked and is stored masked`, async () => {
      const topic = `room:${uid('m')}:chat`;
      const { sender, receiver } = await pair(node, vsn, topic);
      const verdicts = await metric(node, 'chorus_module_verdicts_total');
      const payload = {
        text: 'what a BadWord! no ÄRGER here, badwords stay',
        nested: { list: ['badword', 3, { deep: 'x BADWORD y' }] },
        badword: true,
      };
      assert.equal(await sender.send({ type: 'broadcast', event: 'msg', payload }), 'ok');
      const masked = {
        text: 'what a *******! no ***** here, badwords stay',
        nested: { list: ['*******', 3, { deep: 'x ******* y' }] },
        badword: true,
      };
      await waitFor(() => receiver.got.length === 1, 5000, 'the masked message');
      assert.deepEqual(receiver.got[0].payload, masked);
      const history = await stored(node, topic);
      assert.equal(history.length, 1, JSON.stringify(history));
      assert.deepEqual(history[0].payload, masked);
      assert.equal(await metric(node, 'chorus_module_verdicts_total'), verdicts + 1);
    });
  }

  test('clean messages pass unchanged, delivered and stored as sent', async () => {
    const topic = `room:${uid('c')}:chat`;
    const { sender, receiver } = await pair(node, '2.0.0', topic);
    const verdicts = await metric(node, 'chorus_module_verdicts_total');
    const payloads = [
      { text: 'hello there', n: 1 },
      { text: 'a bad word, split in two', list: ['Bad', 'Word'] },
      { text: 'ärgerlich', emoji: '🔥' },
    ];
    for (const payload of payloads) {
      assert.equal(await sender.send({ type: 'broadcast', event: 'msg', payload }), 'ok');
    }
    await waitFor(() => receiver.got.length === payloads.length, 5000, 'all clean messages');
    assert.deepEqual(receiver.got.map((m) => m.payload), payloads);
    const history = await stored(node, topic);
    assert.deepEqual(history.map((m) => m.payload).reverse(), payloads);
    assert.equal(await metric(node, 'chorus_module_verdicts_total'), verdicts);
  });

  test('topics that are not a chat lane are not filtered', async () => {
    const id = uid('n');
    for (const topic of [`room:${id}:reactions`, `lobby-${id}`, `room:${id}:chatter`]) {
      const { sender, receiver } = await pair(node, '2.0.0', topic);
      const payload = { text: 'badword', emoji: 'badword' };
      assert.equal(await sender.send({ type: 'broadcast', event: 'msg', payload }), 'ok');
      await waitFor(() => receiver.got.length === 1, 5000, `a broadcast on ${topic}`);
      assert.deepEqual(receiver.got[0].payload, payload, topic);
    }
  });

  test('a crashed module is restarted by its supervisor; meanwhile fail_open delivers', async () => {
    const topic = `room:${uid('k')}:chat`;
    const { sender, receiver } = await pair(node, '2.0.0', topic);
    const restarts = await metric(node, 'chorus_restarts_total');
    const timeouts = await metric(node, 'chorus_module_timeouts_total');
    // The module process panics on this event (node.fault_injection only):
    // it never answers, so after modules.timeout_ms the message goes through
    // unscreened.
    const crash = { text: 'badword before the crash' };
    assert.equal(await sender.send({ type: 'broadcast', event: 'chorus_crash_module', payload: crash }), 'ok');
    await waitFor(() => receiver.got.length === 1, 5000, 'the message that crashed the module');
    assert.deepEqual(receiver.got[0].payload, crash);
    assert.equal(await metric(node, 'chorus_module_timeouts_total'), timeouts + 1);
    await waitFor(
      async () => (await metric(node, 'chorus_restarts_total')) > restarts,
      5000,
      'the modules supervisor to restart moderation',
    );
    assert.match(node.logs(), /supervisor `modules`: restarted child `module-moderation`/);
    // The new incarnation screens again.
    assert.equal(await sender.send({ type: 'broadcast', event: 'msg', payload: { text: 'BadWord' } }), 'ok');
    await waitFor(() => receiver.got.length === 2, 5000, 'a message after the restart');
    assert.deepEqual(receiver.got[1].payload, { text: '*******' });
  });
});

describe('moderation, action reject (fail closed)', () => {
  let node;
  before(async () => {
    node = await startNode({
      CHORUS_MODULES_ENABLED: 'moderation',
      CHORUS_MODULES_MODERATION_WORDS: 'badword',
      CHORUS_MODULES_MODERATION_ACTION: 'reject',
      CHORUS_MODULES_FAIL_OPEN: 'false',
      CHORUS_MODULES_TIMEOUT_MS: '2000',
      CHORUS_NODE_FAULT_INJECTION: 'true',
    });
  });
  after(async () => {
    await closeAll();
    await node?.stop();
  });

  for (const vsn of VSNS) {
    test(`${vsn}: the sender gets the moderated error, nobody receives it, nothing is stored`, async () => {
      const topic = `room:${uid('r')}:chat`;
      const { sender, receiver } = await pair(node, vsn, topic);
      const raw = await rawSender(node, vsn, `realtime:${topic}`);
      const verdicts = await metric(node, 'chorus_module_verdicts_total');

      // realtime-js with ack: send() resolves 'error' on an error reply.
      const bad = { text: 'you BadWord', more: ['x'] };
      assert.equal(await sender.send({ type: 'broadcast', event: 'msg', payload: bad }), 'error');
      // The reply carries the reason (seen on the wire).
      assert.deepEqual(await raw.send('msg', { nested: [{ t: 'badword!' }] }), {
        status: 'error',
        response: { reason: REJECT_REASON },
      });
      // A clean message after them: the channel's order makes it the first
      // thing the receiver may get.
      assert.deepEqual(await raw.send('msg', { text: 'clean' }), { status: 'ok', response: {} });
      await waitFor(() => receiver.got.length >= 1, 5000, 'the clean message');
      assert.deepEqual(receiver.got.map((m) => m.payload), [{ text: 'clean' }]);
      assert.deepEqual((await stored(node, topic)).map((m) => m.payload), [{ text: 'clean' }]);
      assert.equal(await metric(node, 'chorus_module_verdicts_total'), verdicts + 2);
    });
  }

  test('a crashed module fails closed: "module moderation unavailable", then it is back', async () => {
    const topic = `room:${uid('f')}:chat`;
    const { receiver } = await pair(node, '2.0.0', topic);
    const raw = await rawSender(node, '2.0.0', `realtime:${topic}`);
    const restarts = await metric(node, 'chorus_restarts_total');
    assert.deepEqual(await raw.send('chorus_crash_module', { text: 'hi' }), {
      status: 'error',
      response: { reason: 'module moderation unavailable' },
    });
    await waitFor(
      async () => (await metric(node, 'chorus_restarts_total')) > restarts,
      5000,
      'the modules supervisor to restart moderation',
    );
    // Back up: it rejects again, and clean messages pass.
    await waitFor(
      async () => (await raw.send('msg', { text: 'badword' })).response.reason === REJECT_REASON,
      5000,
      'the restarted module to answer',
    );
    assert.deepEqual(await raw.send('msg', { text: 'fine' }), { status: 'ok', response: {} });
    await waitFor(() => receiver.got.length >= 1, 5000, 'the clean message');
    assert.deepEqual(receiver.got.map((m) => m.payload), [{ text: 'fine' }]);
    assert.deepEqual((await stored(node, topic)).map((m) => m.payload), [{ text: 'fine' }]);
  });
});

describe('late module answers', () => {
  let node;
  before(async () => {
    node = await startNode({
      CHORUS_MODULES_ENABLED: 'moderation',
      CHORUS_MODULES_MODERATION_WORDS: 'badword',
      CHORUS_NODE_FAULT_INJECTION: 'true',
    });
  });
  after(async () => {
    await closeAll();
    await node?.stop();
  });

  test('are ignored by the channel, which keeps delivering in order (fail open)', async () => {
    const topic = `room:${uid('l')}:chat`;
    const { sender, receiver } = await pair(node, '2.0.0', topic);
    const restarts = await metric(node, 'chorus_restarts_total');
    const timeouts = await metric(node, 'chorus_module_timeouts_total');
    // The module answers this one 100 ms after the channel stopped waiting
    // (node.fault_injection): delivered unscreened, and its verdict reaches
    // the channel's inbox late.
    let i = 0;
    const send = (event) => sender.send({ type: 'broadcast', event, payload: { i: i++, text: 'badword' } });
    assert.equal(await send('chorus_slow_module'), 'ok');
    await waitFor(() => receiver.got.length === 1, 5000, 'the slow message');
    assert.deepEqual(receiver.got[0].payload, { i: 0, text: 'badword' });
    assert.equal(await metric(node, 'chorus_module_timeouts_total'), timeouts + 1);
    // Messages behind it wait in the module's queue and may time out too;
    // once the module caught up, they are masked again.
    await waitFor(
      async () => {
        assert.equal(await send('msg'), 'ok');
        await waitFor(() => receiver.got.length === i, 5000, `message ${i - 1}`);
        return receiver.got[i - 1].payload.text === '*******';
      },
      5000,
      'the module to screen again',
    );
    assert.deepEqual(receiver.got.map((m) => m.payload.i), [...Array(i).keys()]);
    assert.equal(await metric(node, 'chorus_restarts_total'), restarts, 'a process was restarted');
    assert.equal((await stored(node, topic)).length, i);
  });
});

describe('modules config', () => {
  test('an unknown module name stops the node, naming modules.enabled', async () => {
    await assert.rejects(
      startNode({ CHORUS_MODULES_ENABLED: 'moderation,nosuchmodule' }),
      (e) => {
        assert.match(e.message, /node exited early/);
        assert.match(e.message, /modules\.enabled/);
        assert.match(e.message, /nosuchmodule/);
        return true;
      },
    );
  });

  test('a moderation word that can never match stops the node, naming the key', async () => {
    await assert.rejects(
      startNode({ CHORUS_MODULES_ENABLED: 'moderation', CHORUS_MODULES_MODERATION_WORDS: 'ok,two words' }),
      (e) => {
        assert.match(e.message, /modules\.moderation_words/);
        assert.match(e.message, /two words/);
        return true;
      },
    );
  });
});
