// One interface over the real clients, so a behaviour can be tested for
// every client and serializer: realtime-js 1.0.0 / 2.0.0 and phoenix.js
// 1.0.0 / 2.0.0.

import { Presence as PhoenixPresence } from 'phoenix';
import { phoenix, phoenixJoin, phoenixPush, realtime, subscribe, within } from './node.mjs';

export { RawClient } from './node.mjs';

export const KINDS = ['realtime@1.0.0', 'realtime@2.0.0', 'phoenix@1.0.0', 'phoenix@2.0.0'];
export const REALTIME_KINDS = ['realtime@1.0.0', 'realtime@2.0.0'];

/**
 * A client of `kind` joined to nothing yet. `join(topic, config)` joins
 * (realtime-js: `channel(topic)`, so the wire topic is `realtime:<topic>`;
 * phoenix.js joins `realtime:<topic>` directly). Broadcasts received land in
 * `.got` as `{event, payload}`.
 */
export function makeClient(node, kind, opts = {}) {
  const [lib, vsn] = kind.split('@');
  return lib === 'realtime' ? new RealtimeSide(node, vsn, opts) : new PhoenixSide(node, vsn, opts);
}

class RealtimeSide {
  constructor(node, vsn, opts) {
    this.kind = `realtime@${vsn}`;
    this.client = realtime(node, vsn, opts);
    this.got = [];
    this.opens = 0;
    this.closes = [];
    this.client.socketAdapter.onOpen(() => this.opens++);
    this.client.socketAdapter.onClose((e) => this.closes.push({ code: e?.code, reason: e?.reason?.toString() }));
    this.presenceEvents = [];
  }

  async join(topic, config = {}) {
    this.channel = this.client.channel(topic, { config });
    this.channel.on('broadcast', { event: '*' }, (m) => this.got.push({ event: m.event, payload: m.payload }));
    if (config.presence) {
      this.channel.on('presence', { event: 'sync' }, () => this.presenceEvents.push('sync'));
    }
    await subscribe(this.channel);
  }

  /** Resolves with 'ok' / 'error' / 'timed out' as realtime-js does. */
  send(event, payload) {
    return this.channel.send({ type: 'broadcast', event, payload });
  }

  track(meta) {
    return this.channel.track(meta);
  }

  untrack() {
    return this.channel.untrack();
  }

  /** presence key → list of metas (without refs). */
  presenceState() {
    const out = {};
    for (const [k, metas] of Object.entries(this.channel.presenceState())) {
      out[k] = metas.map(({ presence_ref, ...m }) => m);
    }
    return out;
  }

  leave() {
    return this.channel.unsubscribe();
  }

  /** The `ws` instance carrying the socket. */
  transport() {
    return this.client.socketAdapter.getSocket().conn;
  }

  /** Asks a fault-injection node to crash this socket's session. */
  crash() {
    this.client.push({ topic: 'phoenix', event: 'chorus_crash', payload: {}, ref: this.client.socketAdapter.makeRef() });
  }

  joined() {
    return this.channel.state === 'joined';
  }
}

class PhoenixSide {
  constructor(node, vsn, opts) {
    this.kind = `phoenix@${vsn}`;
    this.socket = phoenix(node, vsn, opts);
    this.got = [];
    this.opens = 0;
    this.closes = [];
    this.socket.onOpen(() => this.opens++);
    this.socket.onClose((e) => this.closes.push({ code: e?.code, reason: e?.reason?.toString() }));
  }

  async join(topic, config = {}) {
    this.config = config;
    const full = {
      broadcast: { ack: false, self: false, ...(config.broadcast || {}) },
      presence: { key: '', enabled: !!config.presence, ...(config.presence || {}) },
      private: false,
    };
    this.channel = this.socket.channel(`realtime:${topic}`, { config: full });
    this.channel.on('broadcast', (m) => this.got.push({ event: m.event, payload: m.payload }));
    if (config.presence) this.presence = new PhoenixPresence(this.channel);
    const resp = await phoenixJoin(this.channel);
    return resp;
  }

  /** Like realtime-js: 'ok' at once without ack, else the server's answer. */
  async send(event, payload) {
    const push = this.channel.push('broadcast', { type: 'broadcast', event, payload });
    if (!this.config?.broadcast?.ack) return 'ok';
    return within(
      new Promise((resolve) => {
        push
          .receive('ok', () => resolve('ok'))
          .receive('error', () => resolve('error'))
          .receive('timeout', () => resolve('timed out'));
      }),
      10000,
      'phoenix broadcast ack',
    );
  }

  async track(meta) {
    const [status] = await phoenixPush(this.channel, 'presence', { type: 'presence', event: 'track', payload: meta });
    return status;
  }

  async untrack() {
    const [status] = await phoenixPush(this.channel, 'presence', { type: 'presence', event: 'untrack' });
    return status;
  }

  presenceState() {
    const out = {};
    this.presence.list((key, { metas }) => {
      out[key] = metas.map(({ phx_ref, phx_ref_prev, ...m }) => m);
    });
    return out;
  }

  leave() {
    return within(
      new Promise((resolve) => {
        this.channel
          .leave()
          .receive('ok', () => resolve('ok'))
          .receive('timeout', () => resolve('timed out'));
      }),
      6000,
      'phoenix leave',
    );
  }

  transport() {
    return this.socket.conn;
  }

  crash() {
    this.socket.push({ topic: 'phoenix', event: 'chorus_crash', payload: {}, ref: this.socket.makeRef() });
  }

  joined() {
    return this.channel.state === 'joined';
  }
}
