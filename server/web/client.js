// Rookery's browser client: one WebSocket to /ws with requests matched to
// replies by `ref`, and a session that survives network drops.
//
// Invariant: for every room it has joined, the client knows `since`, the
// highest seq it has been handed with nothing missing below it. After a
// drop it reconnects (backing off, and not while the browser says it is
// offline), joins every room again with that `since`, and so gets exactly
// the messages it missed: none twice, none skipped. Sends waiting for an
// ack are sent again with the same `client_id`; the server answers a
// repeat with the original seq, so nothing is posted twice.

const BACKOFF_MS_MIN = 250;
// Closes with 1009 (message too big) a send may have been on before it is
// given up as refused: once could be another frame's doing, twice is its
// own.
const TOO_BIG_CLOSES_MAX = 2;
// Where unacknowledged sends wait across reloads, per user.
const OUTBOX_KEY = "rookery.outbox.";
const BACKOFF_MS_MAX = 5000;
const REQUEST_TIMEOUT_MS = 15000;
// A socket that has not said hello by then is given up on.
const CONNECT_TIMEOUT_MS = 10000;

// 128 random bits in hex (crypto.randomUUID needs a secure context; a
// server reached over plain http on the LAN is not one).
function randomId() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code);
    this.status = status;
    this.code = code;
  }
}

// One HTTP call to the JSON API.
export async function api(method, path, { token, body } = {}) {
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  const value = text ? JSON.parse(text) : null;
  if (!res.ok) {
    const e = (value && value.error) || {};
    throw new ApiError(res.status, e.code || "http_" + res.status, e.message);
  }
  return value;
}

// Uploads `file` (POST /api/uploads, streamed by the server), telling
// `onProgress` the share sent (0..1); resolves to the upload as the
// server describes it. XMLHttpRequest, not fetch: fetch reports no upload
// progress.
export function upload(token, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/uploads?name=" + encodeURIComponent(file.name || "pasted"));
    xhr.setRequestHeader("authorization", `Bearer ${token}`);
    xhr.setRequestHeader("content-type", file.type || "application/octet-stream");
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onload = () => {
      let value = null;
      try {
        value = JSON.parse(xhr.responseText);
      } catch {
        // not JSON: the status says enough
      }
      if (xhr.status === 201) return resolve(value);
      const e = (value && value.error) || {};
      reject(new ApiError(xhr.status, e.code || "http_" + xhr.status, e.message));
    };
    xhr.onerror = () => reject(new ApiError(0, "network", "the upload failed"));
    xhr.send(file);
  });
}

// A blob URL of what `url` serves to a signed-in user (an <img> cannot
// send the token itself).
export async function blobUrl(token, url) {
  const res = await fetch(url, { headers: { authorization: `Bearer ${token}` } });
  if (!res.ok) throw new ApiError(res.status, "http_" + res.status, `${url}: ${res.status}`);
  return URL.createObjectURL(await res.blob());
}

export class Session {
  // `handlers`: onEvent(frame) for server events (msg, edit, delete,
  // invited,
  // typing, presence, left, receipt), onJoined(frame), onState(state) with
  // state one of "connecting", "online", "offline".
  // `frameBytesMax`: the server's WebSocket message limit
  // (`limits.ws_frame_bytes_max` of /api/server); a frame over it is never
  // sent (the server would close the socket with 1009). `user` names
  // where the outbox is kept across reloads.
  constructor(token, handlers, { frameBytesMax = 64 << 10, user = 0 } = {}) {
    this.token = token;
    this.handlers = handlers;
    this.frameBytesMax = frameBytesMax;
    this.outboxKey = OUTBOX_KEY + user;
    this.ws = null;
    this.state = "connecting";
    this.nextRef = 1;
    this.waiting = new Map(); // ref -> {resolve, reject, timer, frame}
    this.rooms = new Map(); // room -> since (null: live only)
    this.outbox = new Map(); // client_id -> {frame, resolve, reject, acked, sentOn, tooBig}
    // Sends this tab put in the stored outbox (or took over from it): only
    // these does it take out again.
    this.mine = new Set();
    this.backoff = BACKOFF_MS_MIN;
    this.retryTimer = null;
    this.lastHeard = 0;
    this.heartbeatMs = 30000;
    this.closed = false;
    this.closes = 0; // sockets the server (or the network) closed
    this.onOffline = () => this.drop("offline");
    this.onOnline = () => this.reconnectNow();
    window.addEventListener("offline", this.onOffline);
    window.addEventListener("online", this.onOnline);
    this.watchdog = setInterval(() => this.checkAlive(), 1000);
    this.restore();
    this.connect();
  }

  // Sends a reload interrupted: back in the outbox, to go out again with
  // their client_id (a repeat of one the server has is answered with its
  // original seq, so none is posted twice).
  restore() {
    let saved = [];
    try {
      saved = JSON.parse(localStorage.getItem(this.outboxKey)) || [];
    } catch (_) {
      // Unreadable: nothing to restore.
    }
    for (const frame of Array.isArray(saved) ? saved : []) {
      if (frame?.type === "send" && typeof frame.client_id === "string") this.enqueue(frame);
    }
  }

  // The stored outbox made to agree with this tab's: its sends added, those
  // it no longer has (acknowledged, refused, discarded) taken out, and
  // other tabs' left as they are (each tab of the user shares the key).
  persist() {
    let stored = [];
    try {
      stored = JSON.parse(localStorage.getItem(this.outboxKey)) || [];
    } catch (_) {
      // Unreadable: rewritten from this tab's.
    }
    const others = (Array.isArray(stored) ? stored : []).filter(
      (f) => f?.client_id && !this.mine.has(f.client_id),
    );
    for (const id of this.mine) if (!this.outbox.has(id)) this.mine.delete(id);
    const frames = [...others, ...[...this.outbox.values()].map((o) => o.frame)];
    try {
      if (frames.length) localStorage.setItem(this.outboxKey, JSON.stringify(frames));
      else localStorage.removeItem(this.outboxKey);
    } catch (_) {
      // Storage full or refused: the sends still go while the page lives.
    }
  }

  // Forgets the stored outbox (the session ended: a shared computer keeps
  // no message text).
  forget() {
    try {
      localStorage.removeItem(this.outboxKey);
    } catch (_) {
      // Nothing stored.
    }
  }

  // Sends waiting for an ack: [{client_id, room, body, reply_to, files,
  // acked}], oldest first (the app shows them as pending).
  unacknowledged() {
    return [...this.outbox.values()].map((o) => ({ ...o.frame, acked: o.acked }));
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.handlers.onState?.(state);
  }

  connect() {
    if (this.closed) return;
    if (!navigator.onLine) {
      this.setState("offline");
      return; // the "online" event reconnects
    }
    this.setState("connecting");
    const url = new URL("/ws", location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("token", this.token);
    const ws = new WebSocket(url);
    this.ws = ws;
    this.connectStarted = Date.now();
    this.helloSeen = false;
    ws.onmessage = (e) => this.receive(ws, e.data);
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.closes++;
      if (e.code === 4001) {
        // The session was logged out or ran out: no reconnecting.
        this.close();
        this.forget();
        this.handlers.onState?.("unauthorized");
        return;
      }
      if (e.code === 1009) this.tooBig(ws);
      if (this.helloSeen) this.lost("closed");
      else this.refusedOrLost();
    };
    ws.onerror = () => {}; // onclose follows
  }

  // The server closed `ws` for a message over its limit (1009): the
  // largest send that was out on it is suspect, and one suspected again is
  // refused rather than resent forever (it would close every socket it
  // goes out on); the others sent beside it go again. Frames are checked
  // against the limit before they go, so this only happens when the limit
  // is not known (or was lowered): `onTooBig` lets the app read it again.
  tooBig(ws) {
    let largest = null;
    for (const o of this.outbox.values()) {
      if (o.sentOn !== ws) continue;
      if (!largest || Session.frameBytes(o.frame) > Session.frameBytes(largest.frame)) largest = o;
    }
    this.handlers.onTooBig?.();
    if (!largest) return;
    largest.tooBig = (largest.tooBig || 0) + 1;
    if (largest.tooBig >= TOO_BIG_CLOSES_MAX) {
      this.outbox.delete(largest.frame.client_id);
      this.persist();
      largest.reject(new ApiError(0, "too_large", "the server refused it as too large"));
    }
  }

  // The socket is gone: fail what waited on it and come back later.
  lost(why) {
    for (const [, w] of this.waiting) {
      clearTimeout(w.timer);
      w.reject(new ApiError(0, "disconnected", why));
    }
    this.waiting.clear();
    if (this.closed) return;
    this.setState(navigator.onLine ? "connecting" : "offline");
    clearTimeout(this.retryTimer);
    const delay = this.backoff * (0.5 + Math.random() / 2);
    this.backoff = Math.min(this.backoff * 2, BACKOFF_MS_MAX);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  // A socket closed before its hello: a refused upgrade (a token that was
  // revoked or expired is a 401, which a browser reports only as a close)
  // or a network that is down. Asking the API tells which.
  async refusedOrLost() {
    try {
      await api("GET", "/api/me", { token: this.token });
    } catch (e) {
      if (e.status === 401) {
        this.close();
        this.forget();
        this.handlers.onState?.("unauthorized");
        return;
      }
    }
    this.lost("closed");
  }

  // Closes the socket now (the browser went offline, or the server went
  // quiet); the session reconnects when it can.
  drop(why) {
    const ws = this.ws;
    if (!ws) return;
    this.ws = null;
    ws.onclose = null;
    ws.onmessage = null;
    try {
      ws.close();
    } catch (_) {}
    this.lost(why);
  }

  reconnectNow() {
    if (this.ws || this.closed) return;
    clearTimeout(this.retryTimer);
    this.backoff = BACKOFF_MS_MIN;
    this.connect();
  }

  // Two heartbeats without a word from the server: the link is dead even
  // if the socket does not know it yet.
  checkAlive() {
    if (this.ws && !this.helloSeen && Date.now() - this.connectStarted > CONNECT_TIMEOUT_MS) {
      this.drop("no hello");
      return;
    }
    if (this.ws && this.state === "online") {
      const quiet = Date.now() - this.lastHeard;
      if (quiet > 2 * this.heartbeatMs) this.drop("silent");
      else if (quiet > this.heartbeatMs / 2) this.raw({ type: "ping" });
    }
  }

  // Bytes `frame` takes on the wire (UTF-8 JSON).
  static frameBytes(frame) {
    return new TextEncoder().encode(JSON.stringify(frame)).length;
  }

  raw(frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  receive(ws, data) {
    if (this.ws !== ws) return;
    this.lastHeard = Date.now();
    let f;
    try {
      f = JSON.parse(data);
    } catch (_) {
      return;
    }
    if (f.type === "hello") {
      this.helloSeen = true;
      this.heartbeatMs = f.heartbeat_ms || this.heartbeatMs;
      this.user = f.user;
      this.resume();
      return;
    }
    if (f.type === "msg") {
      const since = this.rooms.get(f.room);
      if (since !== undefined && (since === null || f.seq > since)) {
        this.rooms.set(f.room, f.seq);
      }
    }
    if (f.ref !== undefined && this.waiting.has(f.ref)) {
      const w = this.waiting.get(f.ref);
      this.waiting.delete(f.ref);
      clearTimeout(w.timer);
      if (f.type === "error") w.reject(new ApiError(0, f.code, f.message));
      else w.resolve(f);
      return;
    }
    // Removed or banned: the room is not joined again on reconnect.
    if (f.type === "left" && f.reason) this.rooms.delete(f.room);
    this.handlers.onEvent?.(f);
  }

  // After (re)connecting: join every room from where it left off, then
  // send again what was not acknowledged.
  async resume() {
    this.backoff = BACKOFF_MS_MIN;
    this.setState("online");
    const joins = [...this.rooms.keys()].map((room) => this.joinFrame(room));
    const resends = [...this.outbox.entries()].map(([, o]) => this.sendQueued(o));
    await Promise.allSettled([...joins, ...resends]);
  }

  request(frame) {
    return new Promise((resolve, reject) => {
      const ref = this.nextRef++;
      const bytes = Session.frameBytes({ ...frame, ref });
      if (bytes > this.frameBytesMax) {
        // The server would close the socket (1009): never sent.
        reject(new ApiError(0, "too_large", `too large: ${bytes} bytes, the server takes at most ${this.frameBytesMax}`));
        return;
      }
      if (!this.raw({ ...frame, ref })) {
        reject(new ApiError(0, "disconnected", "not connected"));
        return;
      }
      // No reply in time: the link is not working. Reconnecting fails
      // every request waiting on it and resends what is unacknowledged.
      const timer = setTimeout(() => {
        this.waiting.delete(ref);
        reject(new ApiError(0, "timeout", "no reply"));
        this.drop("request timed out");
      }, REQUEST_TIMEOUT_MS);
      this.waiting.set(ref, { resolve, reject, timer });
    });
  }

  async joinFrame(room) {
    const since = this.rooms.get(room);
    const frame = { type: "join", room };
    if (since !== null && since !== undefined) frame.since = since;
    const joined = await this.request(frame);
    if (this.rooms.get(room) === null) this.rooms.set(room, joined.last_seq);
    this.handlers.onJoined?.(joined);
    return joined;
  }

  // Joins a room (live from now; `since` if given); resolves with the
  // `joined` reply, or null when offline (the room is joined on
  // reconnect). Never rejects: a refused join is reported to `onError`.
  join(room, since = null) {
    if (!this.rooms.has(room)) this.rooms.set(room, since);
    if (this.state !== "online") return Promise.resolve(null);
    return this.joinFrame(room).catch((e) => {
      if (e.code !== "disconnected" && e.code !== "timeout") {
        this.rooms.delete(room);
        this.handlers.onError?.(`joining room ${room}: ${e.message}`);
      }
      return null;
    });
  }

  joined(room) {
    return this.rooms.has(room);
  }

  leave(room) {
    this.rooms.delete(room);
    return this.request({ type: "leave", room }).catch(() => null);
  }

  // Posts a message: `client_id` names it while it is pending, and
  // `acked` resolves with the ack once the server has it, however many
  // reconnects that takes.
  // A message, or with `replyTo` a reply to that seq of the room.
  // The send is kept (in memory and in local storage) until the server
  // acknowledges or refuses it.
  send(room, body, replyTo = null, files = []) {
    const client_id = randomId();
    const frame = { type: "send", room, body, client_id };
    if (replyTo) frame.reply_to = replyTo;
    if (files.length) frame.files = files;
    const o = this.enqueue(frame);
    this.persist();
    if (this.state === "online") this.sendQueued(o);
    return { client_id, acked: o.acked };
  }

  // Bytes the send frame `frame` would take with a ref: more than the
  // server's limit is refused before it is queued.
  fits(frame) {
    return Session.frameBytes({ ...frame, ref: Number.MAX_SAFE_INTEGER }) <= this.frameBytesMax;
  }

  enqueue(frame) {
    const o = { frame };
    this.mine.add(frame.client_id);
    o.acked = new Promise((resolve, reject) => Object.assign(o, { resolve, reject }));
    this.outbox.set(frame.client_id, o);
    return o;
  }

  async sendQueued(o) {
    try {
      o.sentOn = this.ws;
      const ack = await this.request(o.frame);
      this.outbox.delete(o.frame.client_id);
      this.persist();
      o.resolve(ack);
    } catch (e) {
      if (e.code === "disconnected" || e.code === "timeout") return; // resume() resends
      if (e.code === "rate_limited") {
        setTimeout(() => this.state === "online" && this.sendQueued(o), 1000);
        return;
      }
      this.outbox.delete(o.frame.client_id);
      this.persist();
      o.reject(e);
    }
  }

  // Gives up a send not acknowledged yet (the user discarded it): it is
  // not sent again, here or after a reload. One already out may still
  // arrive.
  discard(client_id) {
    const o = this.outbox.get(client_id);
    if (!o) return;
    this.outbox.delete(client_id);
    this.persist();
    o.reject(new ApiError(0, "discarded", "discarded"));
  }

  pending(client_id) {
    return this.outbox.has(client_id);
  }

  close() {
    this.closed = true;
    clearInterval(this.watchdog);
    clearTimeout(this.retryTimer);
    window.removeEventListener("offline", this.onOffline);
    window.removeEventListener("online", this.onOnline);
    if (this.ws) this.ws.close(1000);
    this.ws = null;
  }
}
