// A host and a listener of one WhatsSound room, through chorus-kit, against
// a node started with scripts/run.sh (CHORUS_URL to point elsewhere).
//
//   cd clients/kit && npm ci && npm run build && cd ../../examples/node
//   npm install && node room.mjs
//
// Prints what the listener sees: the retained playback and the position it
// computes from the node's clock, the chat, the reactions, who is here.

import { RealtimeClient } from '@supabase/realtime-js';
import WebSocket from 'ws';
import { PushError, Room } from 'chorus-kit';

const base = process.env.CHORUS_URL ?? 'http://127.0.0.1:4000';
const apikey = process.env.CHORUS_APIKEY ?? 'anon';
const id = `example-${process.pid}`;
const connect = () =>
  new RealtimeClient(`${base.replace(/^http/, 'ws')}/realtime/v1`, { params: { apikey }, transport: WebSocket });

// Who hosts the room is room state, set through the admin API.
const res = await fetch(`${base}/realtime/v1/api/rooms/${id}`, {
  method: 'PUT',
  headers: { 'content-type': 'application/json', apikey, authorization: `Bearer ${apikey}` },
  body: JSON.stringify({ host: 'dj' }),
});
if (!res.ok) throw new Error(`PUT room state: HTTP ${res.status}`);

const dj = new Room(connect(), { id, user: 'dj' });
await dj.join();
console.log(`dj: clock offset ${dj.clock.offset.toFixed(1)} ms (round trip ${dj.clock.rtt.toFixed(1)} ms)`);
await dj.publishPlayback({ track: 'whatssound:demo-clicks', position_ms: 0, playing: true });
await dj.say({ user: 'dj', text: 'welcome!' });

const fan = new Room(connect(), { id, user: 'fan', history: 10 });
fan.on('playback', ({ state, retained }) =>
  console.log(`fan: playback ${state.track} ${retained ? '(retained for late joiners)' : ''}`),
);
fan.on('chat', (m) => console.log(`fan: chat ${m.payload.user}: ${m.payload.text}${m.replayed ? ' (history)' : ''}`));
fan.on('reactions', () => console.log('fan: reactions', fan.reactionCounts()));
fan.on('presence', (members) => console.log('fan: here', members.map((m) => m.user).join(', ')));
await fan.join();

await new Promise((r) => setTimeout(r, 1000));
console.log(`fan: position ${fan.position()} ms, dj: position ${dj.position()} ms`);
await dj.react('🔥');
try {
  await fan.publishPlayback({ track: 'mine', position_ms: 0, playing: true });
} catch (e) {
  console.log(`fan: may not play: ${e instanceof PushError ? e.reason : e}`);
}
console.log('fan: online?', await fan.online(['dj', 'nobody']));
await new Promise((r) => setTimeout(r, 500));
await Promise.all([dj.leave(), fan.leave()]);
process.exit(0);
