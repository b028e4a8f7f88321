// A listener in the browser: chorus-kit on realtime-js (browsers have
// WebSocket, so no transport is passed). Bundle with esbuild (see index.html).
import { RealtimeClient } from '@supabase/realtime-js';
import { Room } from 'chorus-kit';

const params = new URLSearchParams(location.search);
const node = params.get('node') ?? 'ws://127.0.0.1:4000';
const client = new RealtimeClient(`${node}/realtime/v1`, { params: { apikey: params.get('apikey') ?? 'anon' } });
const user = params.get('user') ?? `guest-${Math.random().toString(36).slice(2, 6)}`;
const room = new Room(client, { id: params.get('room') ?? 'demo', user, history: 20 });

room.on('chat', (m) => {
  const li = document.createElement('li');
  li.textContent = `${m.payload.user ?? '?'}: ${m.payload.text ?? ''}`;
  document.getElementById('chat').append(li);
});
document.getElementById('say').onsubmit = async (ev) => {
  ev.preventDefault();
  const input = document.getElementById('text');
  await room.say({ user, text: input.value });
  input.value = '';
};
await room.join();
document.getElementById('status').textContent = `in room ${room.id} as ${user}`;
setInterval(() => {
  const p = room.position();
  document.getElementById('position').textContent = p === null ? '—' : `${(p / 1000).toFixed(2)} s`;
}, 100);
