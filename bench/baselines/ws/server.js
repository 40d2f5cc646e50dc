// Baseline: Rookery's protocol subset on Node's `ws` (one process, one
// thread): token auth on the upgrade, join with since, send → ack with
// seq and fan-out to the room, idempotent client_id, ping. In memory only.
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');
const { args, userOf, Rooms, httpHandler } = require('../common');

const opts = args();
const rooms = new Rooms(opts.history);
const members = new Map(); // room id -> Set of sockets
const server = http.createServer(httpHandler(rooms, opts.jwtSecret));
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });

server.on('upgrade', (req, socket, head) => {
  const url = new URL(req.url, 'http://x');
  const user = url.pathname === '/ws' ? userOf(url.searchParams.get('token') || '', opts.jwtSecret) : null;
  if (!user) {
    socket.end('HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => serve(ws, user));
});

function reply(ws, v, ref) {
  if (ref !== undefined) v.ref = ref;
  ws.send(JSON.stringify(v));
}

function serve(ws, user) {
  const joined = new Set();
  reply(ws, { type: 'hello', user });
  ws.on('message', (data) => {
    let f;
    try {
      f = JSON.parse(data);
    } catch (e) {
      return reply(ws, { type: 'error', code: 'bad_json', message: 'a frame must be JSON' });
    }
    const room = Number(f.room);
    switch (f.type) {
      case 'join': {
        let set = members.get(room);
        if (!set) members.set(room, (set = new Set()));
        set.add(ws);
        joined.add(room);
        reply(ws, { type: 'joined', room, last_seq: rooms.get(room).seq, online: [] }, f.ref);
        if (typeof f.since === 'number') for (const m of rooms.since(room, f.since)) ws.send(JSON.stringify(m));
        return;
      }
      case 'send': {
        const [event, ack] = rooms.post(room, user, f.client_id || '', String(f.body));
        reply(ws, Object.assign({ type: 'ack' }, ack), f.ref);
        if (event) {
          const text = JSON.stringify(event);
          for (const m of members.get(room) || []) m.send(text);
        }
        return;
      }
      case 'ping':
        return reply(ws, { type: 'pong' }, f.ref);
      default:
        return reply(ws, { type: 'error', code: 'unknown_type', message: String(f.type) }, f.ref);
    }
  });
  ws.on('close', () => {
    for (const room of joined) members.get(room)?.delete(ws);
  });
}

server.listen(opts.port, '127.0.0.1', () => console.log(`ws baseline on 127.0.0.1:${opts.port}`));
process.on('SIGTERM', () => process.exit(0));
