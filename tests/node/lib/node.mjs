// Starts a real Chorus node (host binary + guest wasm) for one test file and
// offers the helpers the end-to-end tests share: bounded waits, client
// factories for realtime-js and phoenix.js, a raw WebSocket client that
// speaks both serializers, HS256 signing and REST calls.
//
// Binaries: CHORUS_BIN (default <repo>/target/release/chorus) and
// CHORUS_GUEST (default <repo>/target/wasm32-wasip1/release/chorus-guest.wasm).

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import WebSocket from 'ws';
import { RealtimeClient } from '@supabase/realtime-js';
import { Socket as PhoenixSocket } from 'phoenix';

export { WebSocket };

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(here, '..', '..', '..');
export const CHORUS_BIN = process.env.CHORUS_BIN || path.join(REPO, 'target/release/chorus');
export const CHORUS_GUEST =
  process.env.CHORUS_GUEST || path.join(REPO, 'target/wasm32-wasip1/release/chorus-guest.wasm');

export const VSNS = ['1.0.0', '2.0.0'];

// ---------------------------------------------------------------- waiting

/** Polls `predicate` until it returns a truthy value (returned) or `ms` pass (throws). */
export async function waitFor(predicate, ms = 5000, what = 'condition') {
  const deadline = Date.now() + ms;
  let lastError;
  for (;;) {
    try {
      const v = await predicate();
      if (v) return v;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() >= deadline) {
      const detail = lastError ? ` (last error: ${lastError.message})` : '';
      throw new Error(`timed out after ${ms} ms waiting for ${what}${detail}`);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Resolves with the first event argument, rejects after `ms`. */
export function once(emitter, event, ms = 5000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no ${event} within ${ms} ms`)), ms);
    emitter.once(event, (...args) => {
      clearTimeout(t);
      resolve(args);
    });
  });
}

/** A promise with a deadline. */
export function within(promise, ms, what = 'operation') {
  let t;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      t = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(t));
}

export const uid = (prefix = 't') => `${prefix}-${process.pid}-${Math.random().toString(36).slice(2, 10)}`;

// ---------------------------------------------------------------- the node

/** A TCP port on 127.0.0.1 that nothing listens on right now. */
export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Starts a node. `env` holds CHORUS_* overrides. Returns a handle with
 * `port`, `http` (http://127.0.0.1:port), `ws` (ws://…/realtime/v1),
 * `logs()`, `healthz()`, `stop()` (SIGTERM, then SIGKILL) and `kill()` (SIGKILL).
 * Options: `port` and `dataDir` to start on a given port and data directory
 * (another node's, once it drained or died).
 */
export async function startNode(env = {}, { readyMs = 30000, port: fixedPort, dataDir: fixedDir } = {}) {
  for (const [what, file, variable] of [
    ['host binary', CHORUS_BIN, 'CHORUS_BIN'],
    ['guest wasm', CHORUS_GUEST, 'CHORUS_GUEST'],
  ]) {
    if (!existsSync(file)) {
      throw new Error(
        `Chorus ${what} not found at ${file}. Build it first ` +
          '(cargo build --release --target wasm32-wasip1 -p chorus-guest && ' +
          `cargo build --release -p chorus-host) or set ${variable}.`,
      );
    }
  }
  // A second node may take over a drained node's port and data (drain.test.mjs).
  const port = fixedPort ?? (await freePort());
  const dataDir = fixedDir ?? mkdtempSync(path.join(os.tmpdir(), 'chorus-node-test-'));
  const child = spawn(CHORUS_BIN, ['run', '--guest', CHORUS_GUEST], {
    env: {
      ...process.env,
      CHORUS_HOST: '127.0.0.1',
      CHORUS_PORT: String(port),
      CHORUS_DATA_DIR: dataDir,
      NO_COLOR: '1',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const collect = (d) => {
    output += d.toString();
    if (output.length > 2_000_000) output = output.slice(-1_000_000);
  };
  child.stdout.on('data', collect);
  child.stderr.on('data', collect);
  let exited = null;
  const exitPromise = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      exited = { code, signal };
      resolve(exited);
    });
  });
  const http = `http://127.0.0.1:${port}`;
  const node = {
    port,
    dataDir,
    http,
    ws: `ws://127.0.0.1:${port}/realtime/v1`,
    phoenixWs: `ws://127.0.0.1:${port}/socket`,
    child,
    logs: () => output,
    exited: () => exited,
    async healthz() {
      const res = await fetch(`${http}/healthz`, { signal: AbortSignal.timeout(2000) });
      return { status: res.status, body: await res.json() };
    },
    async stopWith(signal) {
      if (exited) return exited;
      child.kill(signal);
      const t = setTimeout(() => {
        if (!exited) child.kill('SIGKILL');
      }, 5000);
      const r = await exitPromise;
      clearTimeout(t);
      return r;
    },
    /** Graceful stop (SIGTERM; SIGKILL if still alive after 5 s). */
    async stop() {
      const r = await node.stopWith('SIGTERM');
      rmSync(dataDir, { recursive: true, force: true });
      return r;
    },
    /** A real crash: SIGKILL. */
    async kill() {
      const r = await node.stopWith('SIGKILL');
      rmSync(dataDir, { recursive: true, force: true });
      return r;
    },
  };
  try {
    const ready = await waitFor(
      async () => {
        if (exited) return 'exited';
        try {
          return (await node.healthz()).status === 200 && 'healthy';
        } catch {
          return false;
        }
      },
      readyMs,
      `GET ${http}/healthz`,
    );
    if (ready === 'exited') throw new Error(`node exited early (${JSON.stringify(exited)})`);
  } catch (e) {
    await node.kill();
    throw new Error(`Chorus node did not become healthy: ${e.message}\n--- node output ---\n${output}`);
  }
  return node;
}

/** Asserts the node is alive and answers /healthz. */
export async function assertHealthy(node) {
  if (node.exited()) throw new Error(`node exited: ${JSON.stringify(node.exited())}\n${node.logs().slice(-4000)}`);
  const h = await node.healthz();
  if (h.status !== 200 || h.body.status !== 'ok') {
    throw new Error(`healthz answered ${h.status} ${JSON.stringify(h.body)}`);
  }
}

// ---------------------------------------------------------------- JWT

const b64url = (buf) => Buffer.from(buf).toString('base64url');

export function signJwt(claims, secret) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac('sha256', secret).update(`${header}.${body}`).digest('base64url');
  return `${header}.${body}.${sig}`;
}

// ---------------------------------------------------------------- clients

const cleanups = new Set();

/** Registers a teardown run by `closeAll()`. */
export function track(fn) {
  cleanups.add(fn);
  return fn;
}

/** Closes every client opened through these helpers. */
export async function closeAll() {
  const fns = [...cleanups];
  cleanups.clear();
  await Promise.allSettled(fns.map((f) => f()));
}

/** A realtime-js client on `node` with serializer `vsn`. */
export function realtime(node, vsn, opts = {}) {
  const client = new RealtimeClient(opts.url || node.ws, {
    transport: WebSocket,
    vsn,
    params: { apikey: opts.apikey || 'anon', ...(opts.params || {}) },
    heartbeatIntervalMs: opts.heartbeatIntervalMs || 25000,
    reconnectAfterMs: opts.reconnectAfterMs || (() => 200),
    timeout: opts.timeout || 5000,
    logger: opts.logger,
    ...(opts.accessToken ? { accessToken: opts.accessToken } : {}),
  });
  track(async () => {
    try {
      client.getChannels().forEach((c) => c.teardown());
      // A channel that left schedules a deferred disconnect (2 heartbeat
      // intervals) that would keep the test process alive.
      client._cancelPendingDisconnect();
    } catch {}
    // Straight to the phoenix socket: RealtimeClient.disconnect() leaves a
    // 10 s timer running (SocketAdapter.disconnect's timeout is never
    // cleared), which would hold every test file open for 10 s.
    await new Promise((resolve) => {
      const t = setTimeout(resolve, 2000);
      client.socketAdapter.getSocket().disconnect(() => {
        clearTimeout(t);
        resolve();
      });
    });
  });
  return client;
}

/** The `ws` instance under a realtime-js client. */
export function realtimeTransport(client) {
  return client.socketAdapter.getSocket().conn;
}

/** Subscribes a realtime-js channel and resolves once SUBSCRIBED (rejects on anything else). */
export function subscribe(channel, ms = 5000) {
  return within(
    new Promise((resolve, reject) => {
      channel.subscribe((status, err) => {
        if (status === 'SUBSCRIBED') resolve(status);
        else reject(new Error(`subscribe: ${status} ${err ? err.message : ''}`));
      });
    }),
    ms,
    `subscribe ${channel.topic}`,
  );
}

/** A realtime-js channel recording every broadcast it receives in `.got`. */
export function recordingChannel(client, topic, config = {}, event = '*') {
  const ch = client.channel(topic, { config });
  ch.got = [];
  ch.on('broadcast', { event }, (msg) => ch.got.push(msg));
  return ch;
}

/**
 * A phoenix.js socket. vsn 2.0.0 uses phoenix.js' own serializer; vsn 1.0.0
 * uses the JSON-object encoding of the 1.0.0 serializer.
 */
export function phoenix(node, vsn, opts = {}) {
  const v1 = vsn === '1.0.0'
    ? {
        encode: (msg, cb) => cb(JSON.stringify(msg)),
        decode: (raw, cb) => cb(JSON.parse(raw)),
      }
    : {};
  const socket = new PhoenixSocket(opts.url || node.phoenixWs, {
    transport: WebSocket,
    vsn,
    params: { apikey: opts.apikey || 'anon' },
    heartbeatIntervalMs: opts.heartbeatIntervalMs || 30000,
    reconnectAfterMs: opts.reconnectAfterMs || (() => 200),
    rejoinAfterMs: () => 200,
    timeout: 5000,
    ...v1,
  });
  track(
    () =>
      new Promise((resolve) => {
        const t = setTimeout(resolve, 2000);
        socket.disconnect(() => {
          clearTimeout(t);
          resolve();
        });
      }),
  );
  socket.connect();
  return socket;
}

/** Joins a phoenix.js channel; resolves with the ok response. */
export function phoenixJoin(channel, ms = 5000) {
  return within(
    new Promise((resolve, reject) => {
      channel
        .join()
        .receive('ok', resolve)
        .receive('error', (e) => reject(new Error(`join error ${JSON.stringify(e)}`)))
        .receive('timeout', () => reject(new Error('join timeout')));
    }),
    ms,
    `phoenix join ${channel.topic}`,
  );
}

/** A phoenix.js push; resolves with [status, response]. */
export function phoenixPush(channel, event, payload, ms = 5000) {
  return within(
    new Promise((resolve) => {
      channel
        .push(event, payload)
        .receive('ok', (r) => resolve(['ok', r]))
        .receive('error', (r) => resolve(['error', r]))
        .receive('timeout', () => resolve(['timeout', null]));
    }),
    ms,
    `phoenix push ${event}`,
  );
}

// ---------------------------------------------------------------- raw WebSocket

/** Decodes a server frame for `vsn` into {join_ref, ref, topic, event, payload}. */
export function decodeServerFrame(vsn, data, isBinary) {
  if (!isBinary) {
    const v = JSON.parse(data.toString('utf8'));
    if (vsn === '1.0.0') return { join_ref: v.join_ref ?? null, ref: v.ref ?? null, topic: v.topic, event: v.event, payload: v.payload };
    const [join_ref, ref, topic, event, payload] = v;
    return { join_ref, ref, topic, event, payload };
  }
  const b = Buffer.from(data);
  const kind = b[0];
  const str = (start, len) => b.subarray(start, start + len).toString('utf8');
  if (kind === 4) {
    const [topicLen, eventLen, metaLen, encoding] = [b[1], b[2], b[3], b[4]];
    let o = 5;
    const topic = str(o, topicLen); o += topicLen;
    const userEvent = str(o, eventLen); o += eventLen;
    const meta = str(o, metaLen); o += metaLen;
    const raw = b.subarray(o);
    const payload = encoding === 1 ? JSON.parse(raw.toString('utf8')) : raw;
    const body = { type: 'broadcast', event: userEvent, payload };
    if (metaLen > 0) body.meta = JSON.parse(meta);
    return { join_ref: null, ref: null, topic, event: 'broadcast', payload: body, kind };
  }
  return { kind, raw: b };
}

/** Encodes a client push for `vsn` as text (JSON object for 1.0.0, array for 2.0.0). */
export function encodeClientText(vsn, { join_ref = null, ref = null, topic, event, payload }) {
  if (vsn === '1.0.0') return JSON.stringify({ join_ref, ref, topic, event, payload });
  return JSON.stringify([join_ref, ref, topic, event, payload]);
}

/** Encodes a realtime-js style kind-3 user broadcast push (JSON payload). */
export function encodeKind3({ join_ref = '', ref = '', topic, event, payload, meta = '' }) {
  const parts = [join_ref, ref, topic, event, meta].map((s) => Buffer.from(s, 'utf8'));
  const header = Buffer.from([3, ...parts.map((p) => p.length), 1]);
  return Buffer.concat([header, ...parts, Buffer.from(JSON.stringify(payload), 'utf8')]);
}

/**
 * A bare `ws` client speaking the Phoenix protocol by hand. Every decoded
 * server message lands in `.messages`; close info in `.closed`.
 */
export class RawClient {
  /** `options`: the `ws` client's (e.g. `{ perMessageDeflate: false }`). */
  constructor(url, vsn, options = {}) {
    this.vsn = vsn;
    this.url = url;
    this.messages = [];
    this.closed = null;
    this.errors = [];
    this.ref = 0;
    this.ws = new WebSocket(url, options);
    this.ws.on('message', (data, isBinary) => {
      try {
        this.messages.push(decodeServerFrame(vsn, data, isBinary));
      } catch (e) {
        this.messages.push({ undecodable: true, error: e.message, data });
      }
    });
    this.ws.on('close', (code, reason) => {
      this.closed = { code, reason: reason.toString() };
    });
    this.ws.on('error', (e) => this.errors.push(e));
    track(() => this.terminate());
  }

  static async open(node, vsn, path = '/realtime/v1/websocket', query = 'apikey=anon', options = {}) {
    const c = new RawClient(`ws://127.0.0.1:${node.port}${path}?${query}&vsn=${vsn}`, vsn, options);
    await within(once(c.ws, 'open').then(() => {}), 5000, 'raw websocket open').catch((e) => {
      throw new Error(`${e.message}; errors: ${c.errors.map((x) => x.message).join('; ')}`);
    });
    return c;
  }

  nextRef() {
    return String(++this.ref);
  }

  sendRaw(data, opts) {
    this.ws.send(data, opts);
  }

  push(topic, event, payload, { join_ref = null, ref = this.nextRef() } = {}) {
    this.ws.send(encodeClientText(this.vsn, { join_ref, ref, topic, event, payload }));
    return ref;
  }

  async waitMessage(pred, ms = 5000, what = 'a message') {
    return waitFor(() => this.messages.find(pred), ms, what);
  }

  async reply(ref, ms = 5000) {
    const m = await this.waitMessage((m) => m.event === 'phx_reply' && m.ref === ref, ms, `reply to ref ${ref}`);
    return m.payload;
  }

  /** Joins `topic`; resolves with the reply payload ({status, response}). */
  async join(topic, config = {}, extra = {}) {
    const ref = this.nextRef();
    this.push(
      topic,
      'phx_join',
      { config: { broadcast: { ack: false, self: false }, presence: { key: '', enabled: false }, private: false, ...config }, ...extra },
      { join_ref: ref, ref },
    );
    const reply = await this.reply(ref);
    this.joinRefs = { ...(this.joinRefs || {}), [topic]: ref };
    return reply;
  }

  broadcasts(topic, event) {
    return this.messages.filter(
      (m) => m.event === 'broadcast' && m.topic === topic && (!event || m.payload?.event === event),
    );
  }

  async closedWithin(ms = 5000) {
    return waitFor(() => this.closed, ms, 'socket close');
  }

  terminate() {
    try {
      this.ws.terminate();
    } catch {}
  }
}

// ------------------------------------------------------------- metrics

/** The value of the unlabelled metric `name` in the node's `/metrics` (fails if absent). */
export async function metric(node, name) {
  const res = await fetch(`${node.http}/metrics`, { signal: AbortSignal.timeout(5000) });
  const line = (await res.text()).split('\n').find((l) => l.startsWith(`${name} `));
  if (!line) throw new Error(`no ${name} in /metrics`);
  return Number(line.split(' ')[1]);
}

/**
 * Every stored message of `topic` over the history API, newest first, in
 * pages of up to 1000 (a page may hold fewer when it is cut by bytes, so
 * only an empty page ends the walk).
 */
export async function allHistory(node, topic) {
  const all = [];
  let before = '';
  for (;;) {
    const q = `limit=1000${before ? `&before=${before}` : ''}`;
    const res = await fetch(`${node.http}/realtime/v1/api/channels/${encodeURIComponent(topic)}/messages?${q}`, {
      headers: { apikey: 'anon' },
      signal: AbortSignal.timeout(10000),
    });
    if (res.status !== 200) throw new Error(`history of ${topic}: ${res.status} ${await res.text()}`);
    const page = await res.json();
    const list = Array.isArray(page) ? page : page.messages;
    if (list.length === 0) return all;
    all.push(...list);
    before = list[list.length - 1].id;
  }
}

// ---------------------------------------------------------------- REST

export async function restBroadcast(node, messages, headers = {}) {
  const res = await fetch(`${node.http}/realtime/v1/api/broadcast`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', apikey: 'anon', ...headers },
    body: JSON.stringify({ messages }),
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  return { status: res.status, text };
}
