// A WhatsSound room: its three lanes on one realtime-js client, with the
// Chorus extensions behind typed methods.

import type { RealtimeChannel, RealtimeClient } from '@supabase/realtime-js';

import { Clock, type SyncOptions } from './clock.js';
import { editJoinConfig, push } from './internal.js';
import { checkPlayback, positionAt, type Playback, type PlaybackEvent, type PlaybackInput } from './playback.js';
import { Tally, type Counts } from './reactions.js';

/** How to join a room. */
export interface RoomOptions {
  /** The room's id: topics `room:<id>:audio`, `room:<id>:chat`, `room:<id>:reactions`. */
  id: string;
  /** This user's id: the presence key on every lane (who is host is decided by it, or by the token). */
  user: string;
  /** Users shown first in a large room's presence (the relevant set). */
  friends?: string[];
  /** Metadata tracked in the chat lane's presence (default `{online_at}`). */
  meta?: Record<string, unknown>;
  /** Ask for chat as one `batch` frame per period in peak mode (default true; the kit unpacks it). */
  batch?: boolean;
  /** Stored chat messages to replay on join, oldest first (default 0: none). */
  history?: number;
  /** Clock samples taken on join (default 5; 0 skips the sync). */
  clockSamples?: number;
  /** How long joins and acknowledged sends may take (default 10000 ms). */
  timeoutMs?: number;
}

/** A chat message as the room delivers it. */
export interface ChatMessage {
  event: string;
  payload: any;
  /** Set on messages replayed from storage on join. */
  replayed: boolean;
  /** The stored message's id, when the node sent one. */
  id?: string;
}

/** One user's presence in the chat lane. */
export interface Member {
  user: string;
  metas: Record<string, unknown>[];
}

/** The `system` push of a room entering or leaving peak mode. */
export interface PeakNotice {
  peak: boolean;
  rate?: number;
}

/** What {@link Room.on} can listen to. */
export interface RoomEvents {
  /** The host's playback state (also the retained state right after joining). */
  playback: PlaybackEvent;
  /** A chat message (batch frames arrive unpacked, one call per message). */
  chat: ChatMessage;
  /** Reactions counted since the last call, by emoji; the running tally is {@link Room.reactionCounts}. */
  reactions: Counts;
  /** Everyone present in the chat lane, after every change. */
  presence: Member[];
  /** The room entered or left peak mode. */
  peak: PeakNotice;
}

type Listener<T> = (value: T) => void;

/** A joined (or joining) WhatsSound room. */
export class Room {
  readonly id: string;
  readonly user: string;
  readonly audio: RealtimeChannel;
  readonly chatLane: RealtimeChannel;
  readonly reactionsLane: RealtimeChannel;
  readonly clock = new Clock();
  /** The latest playback state, `null` before any. */
  playback: Playback | null = null;
  private readonly tally = new Tally();
  private readonly listeners: { [K in keyof RoomEvents]: Set<Listener<RoomEvents[K]>> } = {
    playback: new Set(),
    chat: new Set(),
    reactions: new Set(),
    presence: new Set(),
    peak: new Set(),
  };
  private readonly timeoutMs: number;

  constructor(
    private readonly client: RealtimeClient,
    private readonly options: RoomOptions,
  ) {
    this.id = options.id;
    this.user = options.user;
    this.timeoutMs = options.timeoutMs ?? 10_000;
    const presence = { key: options.user, ...(options.friends ? { friends: options.friends } : {}) };
    this.audio = client.channel(`room:${options.id}:audio`, {
      config: { broadcast: { ack: true, self: false }, presence },
    });
    this.chatLane = client.channel(`room:${options.id}:chat`, {
      config: { broadcast: { ack: true, self: true }, presence: { ...presence, enabled: true } },
    });
    const history = options.history ?? 0;
    const batch = options.batch !== false;
    editJoinConfig(this.chatLane, (config) => ({
      ...config,
      ...(batch ? { chorus: { batch: true } } : {}),
      ...(history > 0 ? { broadcast: { ...config.broadcast, replay: { since: 0, limit: history } } } : {}),
    }));
    this.reactionsLane = client.channel(`room:${options.id}:reactions`, {
      config: { broadcast: { ack: false, self: true }, presence },
    });
    this.bind();
  }

  private bind(): void {
    this.audio.on('broadcast', { event: 'playback' }, (m: any) => {
      const state = m.payload as Playback;
      this.playback = state;
      this.emit('playback', { state, retained: m.meta?.retained === true });
    });
    const chat = (event: string, payload: any, meta?: { id?: string; replayed?: boolean }) =>
      this.emit('chat', { event, payload, replayed: meta?.replayed === true, ...(meta?.id ? { id: String(meta.id) } : {}) });
    this.chatLane.on('broadcast', { event: '*' }, (m: any) => {
      if (m.event === 'batch') {
        for (const inner of (m.payload?.messages ?? []) as { event: string; payload: any }[]) {
          chat(inner.event, inner.payload);
        }
      } else {
        chat(m.event, m.payload, m.meta);
      }
    });
    this.chatLane.on('presence', { event: 'sync' }, () => this.emit('presence', this.members()));
    this.chatLane.on('system', {}, (p: { extension?: string; peak?: boolean; rate?: number }) => {
      if (p?.extension === 'peak_mode') this.emit('peak', { peak: p.peak === true, rate: p.rate });
    });
    this.reactionsLane.on('broadcast', { event: 'reaction' }, (m: any) =>
      this.emit('reactions', this.tally.reaction(m.payload)),
    );
    this.reactionsLane.on('broadcast', { event: 'reaction_counts' }, (m: any) =>
      this.emit('reactions', this.tally.aggregated(m.payload)),
    );
  }

  /** Listens to a room event; returns the function that stops listening. */
  on<K extends keyof RoomEvents>(event: K, listener: Listener<RoomEvents[K]>): () => void {
    this.listeners[event].add(listener);
    return () => this.listeners[event].delete(listener);
  }

  private emit<K extends keyof RoomEvents>(event: K, value: RoomEvents[K]): void {
    for (const listener of this.listeners[event]) listener(value);
  }

  /**
   * Joins the three lanes, tracks this user's presence on the chat lane and
   * syncs the clock. Rejects if a lane cannot be joined in time.
   */
  async join(): Promise<void> {
    await Promise.all([this.audio, this.chatLane, this.reactionsLane].map((c) => this.subscribe(c)));
    const status = await this.chatLane.track(this.options.meta ?? { online_at: Date.now() });
    if (status !== 'ok') throw new Error(`presence track on room ${this.id}: ${status}`);
    const samples = this.options.clockSamples ?? 5;
    if (samples > 0) await this.syncClock({ samples });
  }

  private subscribe(channel: RealtimeChannel): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`joining ${channel.topic} took over ${this.timeoutMs} ms`)), this.timeoutMs);
      channel.subscribe((status, err) => {
        if (status === 'SUBSCRIBED') {
          clearTimeout(timer);
          resolve();
        } else if (status === 'CHANNEL_ERROR' || status === 'TIMED_OUT') {
          clearTimeout(timer);
          reject(new Error(`joining ${channel.topic}: ${status}${err ? ` (${err.message})` : ''}`));
        }
      }, this.timeoutMs);
    });
  }

  /** (Re)syncs the clock with the node, best of `samples` round trips. */
  syncClock(options: SyncOptions = {}) {
    return this.clock.sync(this.audio, options);
  }

  /** The server's time now, as estimated by the clock (Unix ms). */
  serverNow(): number {
    return this.clock.serverNow();
  }

  /** Where the track is now (ms), `null` before any playback state. */
  position(): number | null {
    return this.playback ? positionAt(this.playback, this.serverNow()) : null;
  }

  /**
   * Publishes the playback state (room host only); `taken_at_ms` is now on
   * the server's clock unless given. Rejects with `PushError` (`reason`
   * `not_room_host`, `invalid_playback: …`) when the node refuses it.
   */
  async publishPlayback(state: PlaybackInput): Promise<Playback> {
    const full: Playback = { ...state, taken_at_ms: state.taken_at_ms ?? Math.round(this.serverNow()) };
    const problem = checkPlayback(full);
    if (problem) throw new TypeError(`playback: ${problem}`);
    await this.broadcast(this.audio, 'playback', full);
    this.playback = full;
    return full;
  }

  /**
   * Sends a chat message; resolves once the node stored it. Rejects with
   * `PushError` and the node's reason when it refuses it (a process module,
   * the rate limit, the payload size).
   */
  say(payload: Record<string, unknown>, event = 'message'): Promise<void> {
    return this.broadcast(this.chatLane, event, payload);
  }

  /** Throws a reaction (not acknowledged: the lowest-priority lane). */
  async react(emoji: string): Promise<void> {
    const status = await this.reactionsLane.send({ type: 'broadcast', event: 'reaction', payload: { emoji } });
    if (status !== 'ok') throw new Error(`reaction: ${status}`);
  }

  /** Reactions so far, by emoji (single reactions and aggregated counts). */
  reactionCounts(): Counts {
    return { ...this.tally.counts };
  }

  /**
   * Selective presence: from now on receive presence only for these users
   * (what is on screen); `remove` drops users as they scroll away. Resolves
   * with how many users the subscription holds.
   */
  async watchPresence(add: string[], remove: string[] = []): Promise<number> {
    const reply = await push<{ keys: number }>(this.chatLane, 'presence_subscribe', { add, remove }, this.timeoutMs);
    return reply.keys;
  }

  /** Everyone present in the chat lane (or in this client's subscription). */
  members(): Member[] {
    return Object.entries(this.chatLane.presenceState()).map(([user, metas]) => ({
      user,
      metas: metas as unknown as Record<string, unknown>[],
    }));
  }

  /** The green dot: which of `users` are online anywhere on the node. */
  async online(users: string[]): Promise<Record<string, boolean>> {
    const url = `${this.httpBase()}/api/presence/online?keys=${users.map(encodeURIComponent).join(',')}`;
    const body = (await this.http(url)) as { online?: string[] | Record<string, boolean> };
    const online = body.online ?? [];
    const set = new Set(Array.isArray(online) ? online : Object.keys(online).filter((k) => (online as Record<string, boolean>)[k]));
    return Object.fromEntries(users.map((u) => [u, set.has(u)]));
  }

  /** Stored chat messages, newest first (the history API). */
  async history(limit = 50): Promise<ChatMessage[]> {
    const topic = encodeURIComponent(`realtime:room:${this.id}:chat`);
    const body = (await this.http(`${this.httpBase()}/api/channels/${topic}/messages?limit=${limit}`)) as {
      messages: { id: string; event: string; payload: any }[];
    };
    return body.messages.map((m) => ({ event: m.event, payload: m.payload, replayed: true, id: String(m.id) }));
  }

  /** Leaves the three lanes. */
  async leave(): Promise<void> {
    await Promise.all([this.audio, this.chatLane, this.reactionsLane].map((c) => this.client.removeChannel(c)));
  }

  private async broadcast(channel: RealtimeChannel, event: string, payload: object): Promise<void> {
    await push(channel, 'broadcast', { type: 'broadcast', event, payload }, this.timeoutMs);
  }

  /** `http(s)://host/realtime/v1`: realtime-js' `httpEndpoint` is its broadcast URL. */
  private httpBase(): string {
    return this.client.httpEndpoint.replace(/\/api\/broadcast\/?$/, '');
  }

  private async http(url: string): Promise<unknown> {
    const token = this.client.accessTokenValue ?? this.client.apiKey;
    const headers: Record<string, string> = token ? { apikey: this.client.apiKey ?? token, Authorization: `Bearer ${token}` } : {};
    const res = await fetch(url, { headers });
    if (!res.ok) throw new Error(`${url}: HTTP ${res.status} ${await res.text()}`);
    return res.json();
  }
}
