// Server-clock sync for the audio lane (NTP-style, best of N samples).

import type { RealtimeChannel } from '@supabase/realtime-js';

import { push } from './internal.js';

/** The reply to a `clock` push. */
export interface ClockReply {
  t0: number;
  server_receive_ms: number;
  server_send_ms: number;
}

/** One exchange: what the server's clock is ahead of ours, and the round trip. */
export interface ClockSample {
  /** server ≈ client + offset (ms). */
  offset: number;
  /** Network round trip without the server's own time (ms). */
  rtt: number;
}

/** The sample of one exchange: `t0` sent, `t3` reply received (client ms). */
export function clockSample(reply: ClockReply, t3: number): ClockSample {
  const { t0, server_receive_ms: t1, server_send_ms: t2 } = reply;
  // Clocks tick in whole ms on some platforms: a round trip shorter than a
  // tick can come out slightly negative.
  return { offset: (t1 - t0 + (t2 - t3)) / 2, rtt: Math.max(0, t3 - t0 - (t2 - t1)) };
}

/** The sample with the smallest round trip (its offset is the least skewed). */
export function bestSample(samples: ClockSample[]): ClockSample {
  if (samples.length === 0) throw new Error('no clock samples');
  return samples.reduce((best, s) => (s.rtt < best.rtt ? s : best));
}

/** Options of {@link Clock.sync}. */
export interface SyncOptions {
  /** Exchanges to take (default 5). */
  samples?: number;
  /** Reply timeout of each exchange (default 5000 ms). */
  timeoutMs?: number;
}

/** The node's clock as seen from this client. */
export class Clock {
  /** server ≈ client + offset (ms); 0 until {@link sync} ran. */
  offset = 0;
  /** Round trip of the sample the offset came from (Infinity until synced). */
  rtt = Infinity;

  constructor(private readonly now: () => number = () => Date.now()) {}

  /** One `clock` exchange on a joined channel. */
  async sample(channel: RealtimeChannel, timeoutMs = 5000): Promise<ClockSample> {
    const t0 = this.now();
    const reply = await push<ClockReply>(channel, 'clock', { t0 }, timeoutMs);
    return clockSample(reply, this.now());
  }

  /** Takes `samples` exchanges and keeps the offset of the fastest one. */
  async sync(channel: RealtimeChannel, options: SyncOptions = {}): Promise<ClockSample> {
    const samples: ClockSample[] = [];
    for (let i = 0; i < (options.samples ?? 5); i++) {
      samples.push(await this.sample(channel, options.timeoutMs));
    }
    const best = bestSample(samples);
    this.offset = best.offset;
    this.rtt = best.rtt;
    return best;
  }

  /** The server's time now, estimated (Unix ms). */
  serverNow(): number {
    return this.now() + this.offset;
  }
}
