// permessage-deflate (RFC 7692): a client that offers it (the `ws` package
// and browsers do by default) gets compressed frames, agreed without
// context takeover; one that does not gets the same messages uncompressed;
// a compressed client message is inflated within limits.max_frame_bytes;
// bad deflate data closes only its own socket with 1007.

import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';

import { makeClient } from './lib/clients.mjs';
import { RawClient, assertHealthy, closeAll, metric, startNode, uid, waitFor, within } from './lib/node.mjs';

const MAX_FRAME = 65536;
const AGREED = 'permessage-deflate; server_no_context_takeover; client_no_context_takeover';

/** A handshake over raw TCP offering `extensions`; resolves with the socket and the response head. */
async function handshake(node, extensions) {
  const sock = net.connect(node.port, '127.0.0.1');
  await within(new Promise((r, e) => sock.once('connect', r).once('error', e)), 5000, 'tcp connect');
  const offer = extensions ? `Sec-WebSocket-Extensions: ${extensions}\r\n` : '';
  sock.write(
    'GET /realtime/v1/websocket?apikey=anon&vsn=1.0.0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n' +
      'Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n' +
      `${offer}\r\n`,
  );
  let buf = Buffer.alloc(0);
  sock.on('data', (d) => (buf = Buffer.concat([buf, d])));
  await waitFor(() => buf.includes('\r\n\r\n'), 5000, 'upgrade response');
  const end = buf.indexOf('\r\n\r\n') + 4;
  const head = buf.subarray(0, end).toString();
  return { sock, head, rest: () => buf.subarray(end) };
}

function extensionsOf(head) {
  const line = head.split('\r\n').find((l) => l.toLowerCase().startsWith('sec-websocket-extensions:'));
  return line ? line.slice(line.indexOf(':') + 1).trim() : null;
}

let node;
before(async () => {
  node = await startNode({ CHORUS_LIMITS_MAX_FRAME_BYTES: String(MAX_FRAME), CHORUS_LIMITS_MAX_PAYLOAD_BYTES: '32768' });
});
after(async () => {
  await closeAll();
  await node?.stop();
});

describe('permessage-deflate', () => {
  test('an offer is agreed without context takeover; no offer, or one Chorus cannot honour, gets none', async () => {
    const a = await handshake(node, 'permessage-deflate; client_max_window_bits');
    assert.match(a.head, /^HTTP\/1\.1 101/);
    assert.equal(extensionsOf(a.head), AGREED);
    a.sock.destroy();
    const b = await handshake(node, null);
    assert.match(b.head, /^HTTP\/1\.1 101/);
    assert.equal(extensionsOf(b.head), null);
    b.sock.destroy();
    const c = await handshake(node, 'permessage-deflate; server_max_window_bits=9');
    assert.match(c.head, /^HTTP\/1\.1 101/);
    assert.equal(extensionsOf(c.head), null, 'a smaller server window is declined, not ignored');
    c.sock.destroy();
  });

  test('a large broadcast reaches a compressing and a plain client alike, in far fewer bytes for the first', async () => {
    const room = uid('deflate-room');
    const topic = `realtime:${room}`;
    const packed = await RawClient.open(node, '2.0.0');
    const plain = await RawClient.open(node, '2.0.0', undefined, undefined, { perMessageDeflate: false });
    assert.ok(packed.ws.extensions.includes('permessage-deflate'), `agreed: ${packed.ws.extensions}`);
    assert.equal(plain.ws.extensions, '');
    for (const c of [packed, plain]) assert.equal((await c.join(topic)).status, 'ok');
    const publisher = makeClient(node, 'realtime@2.0.0');
    await publisher.join(room, { broadcast: { ack: true } });
    const before = [packed, plain].map((c) => c.ws._socket.bytesRead);
    const rows = Array.from({ length: 400 }, (_, i) => ({ i, title: 'Song title', artist: 'Artist name' }));
    assert.equal(await publisher.send('playlist', { rows }), 'ok');
    for (const c of [packed, plain]) {
      const got = await c.waitMessage((m) => m.event === 'broadcast' && m.payload?.event === 'playlist', 5000, 'the playlist');
      assert.deepEqual(got.payload.payload.rows, rows);
    }
    const [p, q] = [packed, plain].map((c, i) => c.ws._socket.bytesRead - before[i]);
    const size = JSON.stringify({ rows }).length;
    assert.ok(q >= size, `plain client read ${q} bytes for a ${size}-byte payload`);
    assert.ok(p * 4 < q, `compressed ${p} bytes vs plain ${q}`);
    assert.ok((await metric(node, 'chorus_ws_deflated_frames_total')) >= 1);
    assert.ok((await metric(node, 'chorus_ws_deflate_saved_bytes_total')) > size / 2);
    // Small messages go as they are, and compressed client messages are read.
    assert.equal(await publisher.send('tiny', { n: 1 }), 'ok');
    await packed.waitMessage((m) => m.event === 'broadcast' && m.payload?.event === 'tiny', 5000, 'a small broadcast');
    packed.push(topic, 'broadcast', { type: 'broadcast', event: 'from-packed', payload: { pad: 'q'.repeat(5000) } });
    await plain.waitMessage((m) => m.event === 'broadcast' && m.payload?.event === 'from-packed', 5000, 'a compressed client broadcast');
  });

  test('a compressed message that inflates past limits.max_frame_bytes closes that socket with 1009', async () => {
    const bomb = await RawClient.open(node, '2.0.0');
    const bystander = makeClient(node, 'realtime@2.0.0');
    await bystander.join(uid('bystander'));
    // 2 MB of zeros is a few KB compressed: well under the frame limit on the wire.
    bomb.sendRaw(Buffer.alloc(2_000_000, 0x30).toString(), { compress: true });
    const closed = await bomb.closedWithin(5000);
    assert.equal(closed.code, 1009);
    assert.match(closed.reason, /limits\.max_frame_bytes/);
    await assertHealthy(node);
    assert.equal(bystander.transport().readyState, 1, 'the other socket is untouched');
  });

  test('invalid deflate data closes that socket with 1007; RSV1 without the extension with 1002', async () => {
    for (const [offer, code] of [
      ['permessage-deflate', 1007],
      [null, 1002],
    ]) {
      const { sock, rest } = await handshake(node, offer);
      const mask = Buffer.from([1, 2, 3, 4]);
      const garbage = Buffer.alloc(40, 0xff).map((b, i) => b ^ mask[i % 4]);
      // FIN + RSV1 + text, masked, 40 bytes.
      sock.write(Buffer.concat([Buffer.from([0xc1, 0x80 | 40]), mask, garbage]));
      await waitFor(() => rest().length >= 4, 5000, `a close frame (${offer ?? 'no extension'})`);
      const frame = rest();
      assert.equal(frame[0], 0x88, 'a close frame');
      assert.equal(frame.readUInt16BE(2), code);
      sock.destroy();
    }
    await assertHealthy(node);
  });

  test('node.permessage_deflate = false agrees to nothing', async () => {
    const off = await startNode({ CHORUS_NODE_PERMESSAGE_DEFLATE: 'false' });
    try {
      const a = await handshake(off, 'permessage-deflate; client_max_window_bits');
      assert.match(a.head, /^HTTP\/1\.1 101/);
      assert.equal(extensionsOf(a.head), null);
      a.sock.destroy();
    } finally {
      await off.stop();
    }
  });
});
