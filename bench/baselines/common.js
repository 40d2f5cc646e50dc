// What both baselines share: arguments, JWT checks, rooms kept in memory
// (seq, bounded history, idempotency by client_id), and the small HTTP API
// the load generator's setup uses (POST /api/rooms, GET /api/me, /healthz).
// Messages live in memory only: a baseline has no durability.
'use strict';
const jwt = require('jsonwebtoken');

function args() {
  const out = { port: 8090, jwtSecret: 'rookery-bench', history: 1000 };
  const a = process.argv.slice(2);
  for (let i = 0; i < a.length; i += 2) {
    if (a[i] === '--port') out.port = Number(a[i + 1]);
    else if (a[i] === '--jwt-secret') out.jwtSecret = a[i + 1];
    else if (a[i] === '--history') out.history = Number(a[i + 1]);
    else throw new Error(`unknown argument ${a[i]}`);
  }
  return out;
}

function userOf(token, secret) {
  try {
    const claims = jwt.verify(token, secret, { algorithms: ['HS256'] });
    return typeof claims.sub === 'string' ? claims.sub : null;
  } catch (e) {
    return null;
  }
}

class Rooms {
  constructor(historyMax) {
    this.rooms = new Map();
    this.nextId = 1;
    this.historyMax = historyMax;
  }
  create() {
    const id = this.nextId++;
    this.get(id);
    return id;
  }
  get(id) {
    let r = this.rooms.get(id);
    if (!r) {
      r = { seq: 0, history: [], ids: new Map() };
      this.rooms.set(id, r);
    }
    return r;
  }
  // Appends a message; returns [event, ack fields, isNew].
  post(id, user, clientId, body) {
    const r = this.get(id);
    const key = `${user}\u0000${clientId}`;
    if (clientId && r.ids.has(key)) {
      return [null, { room: id, seq: r.ids.get(key), duplicate: true }, false];
    }
    const seq = ++r.seq;
    const ts = Date.now();
    if (clientId) r.ids.set(key, seq);
    const event = { type: 'msg', room: id, seq, from: user, ts, body };
    r.history.push(event);
    if (r.history.length > this.historyMax) {
      const old = r.history.shift();
      for (const [k, v] of r.ids) if (v <= old.seq) r.ids.delete(k);
    }
    return [event, { room: id, seq, ts, duplicate: false }, true];
  }
  since(id, since) {
    return this.get(id).history.filter((m) => m.seq > since);
  }
}

// The HTTP side; `next` handles anything else (404 by default).
function httpHandler(rooms, secret) {
  return (req, res) => {
    const send = (status, v) => {
      const body = JSON.stringify(v);
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    };
    const auth = (req.headers.authorization || '').replace(/^Bearer /, '');
    if (req.url === '/healthz') return send(200, { status: 'ok' });
    const user = userOf(auth, secret);
    if (!user && req.url.startsWith('/api/')) return send(401, { error: { code: 'unauthorized', message: 'bad token' } });
    if (req.method === 'POST' && req.url === '/api/rooms') {
      req.resume();
      return req.on('end', () => send(201, { id: rooms.create() }));
    }
    if (req.method === 'GET' && req.url === '/api/me') return send(200, { user, name: user });
    send(404, { error: { code: 'not_found', message: req.url } });
  };
}

module.exports = { args, userOf, Rooms, httpHandler };
