// chorus-kit: a typed client for WhatsSound rooms on Chorus, on top of
// @supabase/realtime-js. See README.md.

export { Clock, bestSample, clockSample } from './clock.js';
export type { ClockReply, ClockSample, SyncOptions } from './clock.js';
export { PushError, push } from './internal.js';
export { checkPlayback, positionAt } from './playback.js';
export type { Playback, PlaybackEvent, PlaybackInput } from './playback.js';
export { Tally } from './reactions.js';
export type { Counts } from './reactions.js';
export { Room } from './room.js';
export type { ChatMessage, Member, PeakNotice, RoomEvents, RoomOptions } from './room.js';
