// Bad input, sent as raw WebSocket frames with `ws` (and raw TCP for the
// handshake): every kind gets an error reply or a close with a reason, only
// the offending socket is affected, and after each one a well-behaved
// client on the same node still receives a broadcast and /healthz answers.

import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';

import { makeClient } from './lib/clients.mjs';
import { RawClient, VSNS, assertHealthy, closeAll, encodeKind3, startNode, uid, waitFor, within } from './lib/node.mjs';

const MAX_PAYLOAD = 8192;
const MAX_FRAME = 65536;
const MAX_CHANNELS = 4;

let node;
let room;
let watchers;
let publisher;
let seq = 0;

before(async () => {
  node = await startNode({
    CHORUS_LIMITS_MAX_PAYLOAD_BYTES: String(MAX_PAYLOAD),
    CHORUS_LIMITS_MAX_FRAME_BYTES: String(MAX_FRAME),
    CHORUS_LIMITS_MAX_CHANNELS_PER_SOCKET: String(MAX_CHANNELS),
  });
  room = uid('good-room');
  watchers = [makeClient(node, 'realtime@2.0.0'), makeClient(node, 'realtime@1.0.0'), makeClient(node, 'phoenix@2.0.0')];
  for (const w of watchers) await w.join(room);
  publisher = makeClient(node, 'realtime@2.0.0');
  await publisher.join(room, { broadcast: { ack: true } });
});
after(async () => {
  await closeAll();
  await node?.stop();
});

/** The well-behaved clients still exchange a broadcast; the node is healthy. */
async function stillWorks(after) {
  const n = ++seq;
  assert.equal(await publisher.send('alive', { n, after }), 'ok', `publisher ack after ${after}`);
  for (const w of watchers) {
    await waitFor(() => w.got.some((m) => m.payload.n === n), 5000, `${w.kind} receives broadcast #${n} after ${after}`);
  }
  for (const w of watchers) {
    assert.deepEqual(w.got.map((m) => m.payload.n), Array.from({ length: n }, (_, i) => i + 1), `${w.kind} lost nothing`);
  }
  await assertHealthy(node);
}

/** Waits until every watcher got `event`, then forgets those messages (they are not part of the numbered sequence). */
async function drain(event) {
  await waitFor(() => watchers.every((w) => w.got.some((m) => m.event === event)), 5000, `every watcher receives "${event}"`);
  watchers.forEach((w) => (w.got = w.got.filter((m) => m.event !== event)));
}

/** A phx_error on topic phoenix whose reason matches. */
async function socketError(raw, reason, what) {
  const m = await raw.waitMessage((m) => m.event === 'phx_error' && m.topic === 'phoenix', 5000, `phx_error for ${what}`);
  assert.match(m.payload.reason, reason);
  return m;
}

/** The bad socket itself is still usable (only the bad message was refused). */
async function heartbeatOk(raw) {
  const ref = raw.push('phoenix', 'heartbeat', {});
  assert.deepEqual(await raw.reply(ref), { status: 'ok', response: {} });
}

for (const vsn of VSNS) {
  describe(`serializer ${vsn}`, () => {
    test('malformed JSON text frame → phx_error "malformed message"; the socket keeps working', async () => {
      const raw = await RawClient.open(node, vsn);
      raw.sendRaw('{"topic": "realtime:x", "event": ');
      await socketError(raw, /malformed message: invalid JSON/, 'malformed JSON');
      raw.sendRaw('\u0000\u0001 not json at all');
      await waitFor(() => raw.messages.filter((m) => m.event === 'phx_error').length === 2, 5000, 'second phx_error');
      await heartbeatOk(raw);
      await stillWorks(`malformed JSON (${vsn})`);
    });

    test('well-formed JSON of the wrong shape → phx_error naming the problem', async () => {
      const raw = await RawClient.open(node, vsn);
      const cases = vsn === '1.0.0'
        ? [
            ['[null, "1", "realtime:x", "phx_join", {}]', /must be a JSON object/],
            ['{"ref": "1", "event": "phx_join", "payload": {}}', /missing topic/],
            ['{"topic": 42, "event": "phx_join", "payload": {}, "ref": "1"}', /topic must be a string/],
            ['{"topic": "realtime:x", "event": "phx_join", "ref": "1"}', /missing payload/],
          ]
        : [
            ['{"topic": "realtime:x", "event": "phx_join", "payload": {}}', /must be a JSON array/],
            ['["1", "1", "realtime:x", "phx_join"]', /array of 5 elements, got 4/],
            ['["1", "1", null, "phx_join", {}]', /missing topic/],
            ['["1", "1", "realtime:x", 7, {}]', /event must be a string/],
          ];
      for (const [i, [frame, reason]] of cases.entries()) {
        raw.sendRaw(frame);
        const errors = await waitFor(() => {
          const e = raw.messages.filter((m) => m.event === 'phx_error');
          return e.length === i + 1 && e;
        }, 5000, `phx_error #${i + 1}`);
        assert.match(errors[i].payload.reason, reason, frame);
      }
      await heartbeatOk(raw);
      await stillWorks(`wrong-shape JSON (${vsn})`);
    });

    test('a join without a topic / with an empty topic / on "phoenix" is refused', async () => {
      const raw = await RawClient.open(node, vsn);
      // No topic at all: the frame cannot be decoded.
      raw.sendRaw(vsn === '1.0.0'
        ? JSON.stringify({ join_ref: '1', ref: '1', event: 'phx_join', payload: { config: {} } })
        : JSON.stringify(['1', '1', null, 'phx_join', { config: {} }]));
      await socketError(raw, /missing topic/, 'join without topic');
      // Empty topic: an error reply.
      const ref = raw.push('', 'phx_join', { config: {} }, { join_ref: '9' });
      assert.deepEqual(await raw.reply(ref), { status: 'error', response: { reason: 'join without a topic' } });
      const ref2 = raw.push('phoenix', 'phx_join', { config: {} }, { join_ref: '10' });
      const r2 = await raw.reply(ref2);
      assert.equal(r2.status, 'error');
      // A join whose config is not an object.
      const ref3 = raw.push('realtime:bad-config', 'phx_join', { config: 'yes' }, { join_ref: '11' });
      assert.deepEqual(await raw.reply(ref3), { status: 'error', response: { reason: 'config must be an object' } });
      await heartbeatOk(raw);
      await stillWorks(`bad joins (${vsn})`);
    });

    test('unknown event on a joined topic → error reply; unknown event on "phoenix" too', async () => {
      const raw = await RawClient.open(node, vsn);
      const topic = `realtime:${room}`;
      assert.equal((await raw.join(topic)).status, 'ok');
      const ref = raw.push(topic, 'make_coffee', { strength: 11 }, { join_ref: raw.joinRefs[topic] });
      const reply = await raw.reply(ref);
      assert.deepEqual(reply, { status: 'error', response: { reason: 'unknown event "make_coffee"' } });
      const ref2 = raw.push('phoenix', 'reboot', {});
      const reply2 = await raw.reply(ref2);
      assert.equal(reply2.status, 'error');
      assert.match(reply2.response.reason, /unknown event "reboot" on topic phoenix/);
      // Presence with a bad event name.
      const ref3 = raw.push(topic, 'presence', { type: 'presence', event: 'dance' }, { join_ref: raw.joinRefs[topic] });
      assert.deepEqual(await raw.reply(ref3), { status: 'error', response: { reason: 'presence event must be track or untrack' } });
      await stillWorks(`unknown events (${vsn})`);
      // The raw client is a member of the room and gets the broadcast too.
      await waitFor(() => raw.broadcasts(topic, 'alive').some((m) => m.payload.payload.n === seq), 5000, 'raw member receives');
    });

    test('a push to a topic not joined → "unmatched topic"', async () => {
      const raw = await RawClient.open(node, vsn);
      const topic = `realtime:${uid('never-joined')}`;
      const ref = raw.push(topic, 'broadcast', { type: 'broadcast', event: 'e', payload: {} }, { join_ref: '1' });
      assert.deepEqual(await raw.reply(ref), { status: 'error', response: { reason: 'unmatched topic' } });
      const ref2 = raw.push(topic, 'presence', { type: 'presence', event: 'track', payload: {} });
      assert.deepEqual(await raw.reply(ref2), { status: 'error', response: { reason: 'unmatched topic' } });
      const ref3 = raw.push(topic, 'phx_leave', {});
      assert.deepEqual(await raw.reply(ref3), { status: 'error', response: { reason: 'unmatched topic' } });
      // Not joined to the good room either: a broadcast there is refused, not delivered.
      const ref4 = raw.push(`realtime:${room}`, 'broadcast', { type: 'broadcast', event: 'alive', payload: { n: -1 } });
      assert.deepEqual(await raw.reply(ref4), { status: 'error', response: { reason: 'unmatched topic' } });
      await stillWorks(`unmatched topic (${vsn})`);
    });

    test(`a payload over limits.max_payload_bytes (${MAX_PAYLOAD}) → payload_size_exceeded, nothing delivered`, async () => {
      const raw = await RawClient.open(node, vsn);
      const topic = `realtime:${room}`;
      assert.equal((await raw.join(topic, { broadcast: { ack: true, self: false } })).status, 'ok');
      const big = 'x'.repeat(MAX_PAYLOAD + 10);
      const ref = raw.push(topic, 'broadcast', { type: 'broadcast', event: 'alive', payload: { n: -1, big } }, { join_ref: raw.joinRefs[topic] });
      assert.deepEqual(await raw.reply(ref), { status: 'error', response: { reason: 'payload_size_exceeded' } });
      // A presence meta over the limit too.
      const ref2 = raw.push(topic, 'presence', { type: 'presence', event: 'track', payload: { big } }, { join_ref: raw.joinRefs[topic] });
      assert.deepEqual(await raw.reply(ref2), { status: 'error', response: { reason: 'payload_size_exceeded' } });
      // Just under the limit is fine.
      const ok = raw.push(topic, 'broadcast', { type: 'broadcast', event: 'fits', payload: { s: 'y'.repeat(MAX_PAYLOAD - 200) } }, { join_ref: raw.joinRefs[topic] });
      assert.equal((await raw.reply(ok)).status, 'ok');
      await drain('fits');
      await stillWorks(`oversized payload (${vsn})`);
      assert.ok(watchers.every((w) => w.got.every((m) => m.payload.n !== -1)), 'the oversized message was not delivered');
    });

    test('realtime-js send() of an oversized payload with ack resolves "error"', async () => {
      const c = makeClient(node, `realtime@${vsn}`);
      await c.join(room, { broadcast: { ack: true } });
      assert.equal(await c.send('alive', { n: -1, big: 'z'.repeat(MAX_PAYLOAD + 1) }), 'error');
      assert.equal(await c.send('small', { n: -2 }), 'ok');
      await drain('small');
      await stillWorks(`oversized realtime-js send (${vsn})`);
    });

    test(`a WebSocket message over limits.max_frame_bytes (${MAX_FRAME}) closes that socket with 1009 and a reason`, async () => {
      const raw = await RawClient.open(node, vsn);
      raw.sendRaw(JSON.stringify({ pad: 'p'.repeat(MAX_FRAME + 100) }));
      const closed = await raw.closedWithin(5000);
      assert.equal(closed.code, 1009);
      assert.match(closed.reason, /limits\.max_frame_bytes/);
      await stillWorks(`oversized frame (${vsn})`);
    });

    test('WebSocket protocol violations close the socket with a code and reason', async () => {
      // Unmasked client frame (RFC 6455 §5.1): 1002.
      const a = await RawClient.open(node, vsn);
      a.ws.send('["1","1","phoenix","heartbeat",{}]', { mask: false });
      const ca = await a.closedWithin(5000);
      assert.equal(ca.code, 1002);
      assert.match(ca.reason, /WebSocket protocol error/);
      // Text frame that is not UTF-8: 1007.
      const b = await RawClient.open(node, vsn);
      b.ws.send(Buffer.from([0x22, 0xff, 0xfe, 0x22]), { binary: false });
      const cb = await b.closedWithin(5000);
      assert.equal(cb.code, 1007);
      assert.match(cb.reason, /UTF-8/);
      await stillWorks(`protocol violations (${vsn})`);
    });
  });
}

describe('limits and invalid values', () => {
  test(`more than limits.max_channels_per_socket (${MAX_CHANNELS}) joins → ChannelRateLimitReached; rejoining a joined topic is not counted`, async () => {
    const raw = await RawClient.open(node, '1.0.0');
    const topics = Array.from({ length: MAX_CHANNELS }, () => `realtime:${uid('many')}`);
    for (const t of topics) assert.equal((await raw.join(t)).status, 'ok', t);
    const over = await raw.join(`realtime:${uid('one-too-many')}`);
    assert.equal(over.status, 'error');
    assert.match(over.response.reason, /^ChannelRateLimitReached/);
    // Joining an already joined topic again replaces it instead.
    assert.equal((await raw.join(topics[0])).status, 'ok');
    await heartbeatOk(raw);
    await stillWorks('too many channels');
  });

  test('a topic over 255 bytes is refused at join', async () => {
    const raw = await RawClient.open(node, '2.0.0');
    const r = await raw.join(`realtime:${'t'.repeat(300)}`);
    assert.equal(r.status, 'error');
    assert.match(r.response.reason, /topic longer than 255 bytes/);
    await stillWorks('long topic');
  });

  test('presence: a non-object meta and more than 10 metas under one key are refused; the channel keeps serving', async () => {
    const topic = `realtime:${room}`;
    const raw = await RawClient.open(node, '1.0.0');
    assert.equal((await raw.join(topic, { presence: { key: 'shared', enabled: true } })).status, 'ok');
    for (const meta of [5, 'text', [1, 2], null]) {
      const ref = raw.push(topic, 'presence', { type: 'presence', event: 'track', payload: meta }, { join_ref: raw.joinRefs[topic] });
      const r = await raw.reply(ref);
      assert.equal(r.status, 'error', `meta ${JSON.stringify(meta)}`);
    }
    // Ten sockets may share a presence key; the eleventh is refused.
    const sockets = [];
    for (let i = 0; i < 11; i++) {
      const s = await RawClient.open(node, '2.0.0');
      assert.equal((await s.join(topic, { presence: { key: 'crowded', enabled: false } })).status, 'ok');
      const ref = s.push(topic, 'presence', { type: 'presence', event: 'track', payload: { i } }, { join_ref: s.joinRefs[topic] });
      sockets.push([s, await s.reply(ref)]);
    }
    assert.deepEqual(sockets.slice(0, 10).map(([, r]) => r.status), Array(10).fill('ok'));
    assert.equal(sockets[10][1].status, 'error');
    for (const [s] of sockets) s.terminate();
    await stillWorks('bad presence');
  });

  test('a join whose payload is binary (kind 0 push) is refused', async () => {
    const raw = await RawClient.open(node, '2.0.0');
    const topic = 'realtime:bin-join';
    const parts = ['5', '5', topic, 'phx_join'].map((x) => Buffer.from(x));
    raw.sendRaw(Buffer.concat([Buffer.from([0, ...parts.map((p) => p.length)]), ...parts, Buffer.from([1, 2, 3])]), { binary: true });
    const reply = await raw.reply('5');
    assert.deepEqual(reply, { status: 'error', response: { reason: 'join payload must be JSON' } });
    await stillWorks('binary join');
  });
});

describe('binary frames', () => {
  test('vsn 2.0.0: malformed binary frames → phx_error with the decoder\'s reason; the socket keeps working', async () => {
    const raw = await RawClient.open(node, '2.0.0');
    const topic = `realtime:${room}`;
    assert.equal((await raw.join(topic)).status, 'ok');
    const cases = [
      [Buffer.from([]), /empty binary frame/],
      [Buffer.from([3, 1, 1]), /frame too short: binary kind 3/],
      [Buffer.from([3, 0, 0, 200, 1, 0, 1, 0x61]), /length field of topic exceeds frame/],
      [Buffer.from([9, 0, 0, 0]), /unknown binary kind 9/],
      [Buffer.from([4, 1, 1, 0, 1, 0x61, 0x62]), /binary kind 4 is not expected in this direction/],
      [Buffer.from([1, 0, 0, 1, 2, 0x61, 0x6f, 0x6b]), /binary kind 1 is not expected/],
      [Buffer.concat([Buffer.from([3, 0, 0, 2, 1, 0, 7]), Buffer.from('ab'), Buffer.from('e')]), /unknown payload encoding 7/],
      [Buffer.concat([Buffer.from([3, 0, 0, 2, 1, 0, 1]), Buffer.from([0xff, 0xfe]), Buffer.from('e{}')]), /topic is not valid UTF-8/],
      [Buffer.concat([Buffer.from([3, 0, 0, topic.length, 1, 0, 1]), Buffer.from(topic), Buffer.from('e'), Buffer.from('{not json')]), /invalid JSON/],
      [Buffer.from([0, 0, 0, 1]), /frame too short|length field/],
    ];
    for (const [i, [frame, reason]] of cases.entries()) {
      raw.sendRaw(frame, { binary: true });
      const errors = await waitFor(() => {
        const e = raw.messages.filter((m) => m.event === 'phx_error');
        return e.length === i + 1 && e;
      }, 5000, `phx_error #${i + 1} for ${frame.toString('hex')}`);
      assert.match(errors[i].payload.reason, reason, `frame ${frame.toString('hex')}`);
    }
    await heartbeatOk(raw);
    await stillWorks('malformed binary frames');
    // A correct kind-3 push from the same socket still goes through.
    raw.sendRaw(encodeKind3({ join_ref: raw.joinRefs[topic], ref: '99', topic, event: 'from-raw', payload: { ok: 1 } }), { binary: true });
    await drain('from-raw');
  });

  test('vsn 2.0.0: an oversized kind-3 broadcast → payload_size_exceeded reply', async () => {
    const raw = await RawClient.open(node, '2.0.0');
    const topic = `realtime:${room}`;
    assert.equal((await raw.join(topic, { broadcast: { ack: true } })).status, 'ok');
    raw.sendRaw(encodeKind3({ join_ref: raw.joinRefs[topic], ref: '77', topic, event: 'alive', payload: { n: -1, big: 'q'.repeat(MAX_PAYLOAD) } }), { binary: true });
    assert.deepEqual(await raw.reply('77'), { status: 'error', response: { reason: 'payload_size_exceeded' } });
    await stillWorks('oversized kind-3');
  });

  test('vsn 1.0.0: any binary frame → phx_error "binary frames need vsn 2.0.0"', async () => {
    const raw = await RawClient.open(node, '1.0.0');
    raw.sendRaw(encodeKind3({ topic: `realtime:${room}`, event: 'alive', payload: { n: -1 } }), { binary: true });
    await socketError(raw, /binary frames need vsn 2\.0\.0/, 'binary in 1.0.0');
    await heartbeatOk(raw);
    await stillWorks('binary in 1.0.0');
  });
});

describe('the HTTP handshake', () => {
  /** Writes raw bytes on a TCP connection; resolves with everything read until close. */
  function rawTcp(bytes, ms = 5000) {
    return within(
      new Promise((resolve, reject) => {
        const s = net.connect(node.port, '127.0.0.1', () => s.write(bytes));
        let data = '';
        s.on('data', (d) => (data += d.toString('latin1')));
        s.on('end', () => {
          s.destroy();
          resolve(data);
        });
        s.on('close', () => resolve(data));
        s.on('error', reject);
      }),
      ms,
      'raw TCP exchange',
    );
  }

  test('garbage before the handshake → HTTP 400, connection closed', async () => {
    const res = await rawTcp(Buffer.concat([Buffer.from([0x16, 0x03, 0x01, 0x00, 0xff, 0x00]), Buffer.from(' garbage\r\n\r\n')]));
    assert.match(res, /^HTTP\/1\.1 400 /);
    await stillWorks('garbage before handshake');
  });

  test('a request line that is not HTTP → 400', async () => {
    const res = await rawTcp('HELLO THERE\r\n\r\n');
    assert.match(res, /^HTTP\/1\.1 400 /);
    await stillWorks('non-HTTP request line');
  });

  test('an upgrade with an unknown vsn → 400 with a reason; without upgrade headers → 4xx', async () => {
    const res = await rawTcp(
      'GET /realtime/v1/websocket?vsn=9.9.9 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
    );
    assert.match(res, /^HTTP\/1\.1 400 /);
    assert.match(res, /9\.9\.9|vsn/);
    const plain = await rawTcp('GET /realtime/v1/websocket?vsn=1.0.0 HTTP/1.1\r\nHost: x\r\n\r\n');
    assert.match(plain, /^HTTP\/1\.1 4\d\d /);
    await stillWorks('bad upgrades');
  });

  test('an oversized request head → 431 (limits.max_http_head_bytes)', async () => {
    const res = await rawTcp(`GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${'h'.repeat(20000)}\r\n\r\n`);
    assert.match(res, /^HTTP\/1\.1 431 /);
    await stillWorks('oversized head');
  });
});

test('after all the bad input the node counts protocol errors and is healthy', async () => {
  const text = await (await fetch(`${node.http}/metrics`)).text();
  const m = text.match(/^chorus_protocol_errors_total (\d+)/m);
  assert.ok(m, `protocol error metric present:\n${text.slice(0, 2000)}`);
  assert.ok(Number(m[1]) >= 20, `protocol errors counted: ${m[1]}`);
  assert.ok(!/panicked/.test(node.logs()), 'no panic in the node log');
  await stillWorks('everything');
});
