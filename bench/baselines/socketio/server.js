// Baseline: the same protocol subset on Socket.IO 4 (one process, one
// thread): token auth in the handshake, `join` and `send` events with
// acknowledgements, `msg` events broadcast to the room. In memory only.
'use strict';
const http = require('http');
const { Server } = require('socket.io');
const { args, userOf, Rooms, httpHandler } = require('../common');

const opts = args();
const rooms = new Rooms(opts.history);
const server = http.createServer(httpHandler(rooms, opts.jwtSecret));
const io = new Server(server, { transports: ['websocket'], serveClient: false, perMessageDeflate: false });

io.use((socket, next) => {
  const user = userOf((socket.handshake.auth && socket.handshake.auth.token) || '', opts.jwtSecret);
  if (!user) return next(new Error('unauthorized'));
  socket.data.user = user;
  next();
});

io.on('connection', (socket) => {
  const user = socket.data.user;
  socket.on('join', (f, ack) => {
    const room = Number(f && f.room);
    socket.join(String(room));
    if (typeof ack === 'function') ack({ type: 'joined', room, last_seq: rooms.get(room).seq });
    if (f && typeof f.since === 'number') for (const m of rooms.since(room, f.since)) socket.emit('msg', m);
  });
  socket.on('send', (f, ack) => {
    const room = Number(f && f.room);
    const [event, fields] = rooms.post(room, user, (f && f.client_id) || '', String(f && f.body));
    if (typeof ack === 'function') ack(Object.assign({ type: 'ack' }, fields));
    if (event) io.to(String(room)).emit('msg', event);
  });
});

server.listen(opts.port, '127.0.0.1', () => console.log(`socket.io baseline on 127.0.0.1:${opts.port}`));
process.on('SIGTERM', () => process.exit(0));
