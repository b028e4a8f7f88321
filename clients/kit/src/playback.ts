// The audio lane's `playback` state and where the track is now.

/** What the room's host publishes on the audio lane. */
export interface Playback {
  track: string;
  /** Position when the state was taken (ms). */
  position_ms: number;
  playing: boolean;
  /** The server's time when the state was taken (Unix ms). */
  taken_at_ms: number;
  /** Extra fields pass through. */
  [extra: string]: unknown;
}

/** What the host publishes: `taken_at_ms` defaults to the server's time now. */
export interface PlaybackInput {
  track: string;
  position_ms: number;
  playing: boolean;
  taken_at_ms?: number;
  [extra: string]: unknown;
}

/** A `playback` broadcast as a listener gets it. */
export interface PlaybackEvent {
  state: Playback;
  /** True for the state the node retained and sent right after joining. */
  retained: boolean;
}

/** The position of `state` at server time `serverNow` (ms, never negative). */
export function positionAt(state: Playback, serverNow: number): number {
  if (!state.playing) return state.position_ms;
  return Math.max(0, state.position_ms + (serverNow - state.taken_at_ms));
}

/** Checks a `playback` payload the way the node does, so bad input fails early. */
export function checkPlayback(state: Partial<Playback>): string | null {
  if (typeof state.track !== 'string' || state.track === '') return 'track must be a non-empty string';
  if (typeof state.position_ms !== 'number' || !(state.position_ms >= 0)) return 'position_ms must be a number >= 0';
  if (typeof state.playing !== 'boolean') return 'playing must be a boolean';
  if (state.taken_at_ms !== undefined && typeof state.taken_at_ms !== 'number') return 'taken_at_ms must be a number';
  return null;
}
