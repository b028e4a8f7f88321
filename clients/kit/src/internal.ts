// The one place the kit reaches past realtime-js' public API.
//
// realtime-js (2.119) has no public method to push a custom event on a
// channel and read its reply: `channel.send()` only knows broadcast, presence
// and postgres_changes. Chorus' room extensions (`clock`,
// `presence_subscribe`) are ordinary Phoenix pushes, so the kit uses the
// channel's `channelAdapter.push(event, payload, timeout)`, which returns
// phoenix.js' `Push` (`receive('ok' | 'error' | 'timeout', cb)`). If a later
// realtime-js renames it, this file is what changes.
//
// Likewise realtime-js builds the join's `config` from the keys it knows
// (broadcast, presence, private, postgres_changes) and drops the others, and
// refuses `broadcast.replay` on a public channel, which Chorus serves; so
// Chorus' join options (`config.chorus.batch`, `broadcast.replay`) are added
// by wrapping the channel's public `updateJoinPayload`, which `subscribe()`
// calls with the config it built.

import type { RealtimeChannel } from '@supabase/realtime-js';

/** A push was refused (`phx_reply` status `error`): `reason` is the server's. */
export class PushError extends Error {
  constructor(
    readonly event: string,
    readonly reason: string,
  ) {
    super(`${event}: ${reason}`);
    this.name = 'PushError';
  }
}

interface PhoenixPush {
  receive(status: string, callback: (response: any) => void): PhoenixPush;
}

interface WithAdapter {
  channelAdapter?: { push(event: string, payload: object, timeout?: number): PhoenixPush };
}

/**
 * Pushes `event` with `payload` on a joined channel and resolves with the
 * reply's `response` (status `ok`); rejects with a {@link PushError} carrying
 * the server's reason, or on timeout.
 */
export function push<T = unknown>(
  channel: RealtimeChannel,
  event: string,
  payload: object,
  timeoutMs = 5000,
): Promise<T> {
  const adapter = (channel as unknown as WithAdapter).channelAdapter;
  if (!adapter || typeof adapter.push !== 'function') {
    return Promise.reject(
      new Error('this realtime-js has no channelAdapter.push; chorus-kit supports 2.119.x'),
    );
  }
  return new Promise<T>((resolve, reject) => {
    adapter
      .push(event, payload, timeoutMs)
      .receive('ok', (response: T) => resolve(response))
      .receive('error', (response: { reason?: string } | undefined) =>
        reject(new PushError(event, response?.reason ?? JSON.stringify(response))),
      )
      .receive('timeout', () => reject(new PushError(event, `no reply within ${timeoutMs} ms`)));
  });
}

/**
 * Rewrites the `config` of every join `channel` sends with `edit` (call
 * before `subscribe()`).
 */
export function editJoinConfig(
  channel: RealtimeChannel,
  edit: (config: Record<string, any>) => Record<string, any>,
): void {
  const update = channel.updateJoinPayload.bind(channel);
  channel.updateJoinPayload = (payload: Record<string, any>) => {
    const config = payload.config;
    update(config && typeof config === 'object' ? { ...payload, config: edit(config) } : payload);
  };
}
