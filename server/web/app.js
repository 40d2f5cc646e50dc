// Rookery's web client: sign up or in, rooms with unread badges, a
// virtualized message view fed by the history API and the live socket,
// sends that stay pending until acknowledged, edits, deletes, replies
// with their quotes and threads in a side panel, typing, presence and read
// markers; invitations to accept or decline, and the reason when you are
// removed from a room or banned; message search, a result opening its room
// at the message.
//
// Each open room keeps its messages by seq in `view.msgs`, with `lo`..`hi`
// the range the list shows (seqs are dense: every seq in the range is a
// row; one not loaded yet shows as a placeholder until it is fetched).

import { api, ApiError, Session, upload, blobUrl } from "./client.js";
import { VirtualList } from "./vlist.js";
import { render as markdown, mentions } from "./markdown.js";

const TYPING_SHOW_MS = 4000;
const TYPING_SEND_EVERY_MS = 2500;
const READ_EVERY_MS = 500;
// Pages of members' read markers read when a room opens (500 each): a
// "seen by" line names at most this many readers' positions.
const MARKER_PAGES_MAX = 4;
// Names a "seen by" line spells out before "and N more".
const SEEN_NAMES_MAX = 3;
// Files one message carries, at most (the server's bound).
const FILES_PER_MESSAGE_MAX = 10;
const SESSION_KEY = "rookery.session";

const $ = (sel) => document.querySelector(sel);
const el = (tag, props = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  e.append(...children);
  return e;
};

const state = {
  auth: null, // {user, name, token}
  avatar: undefined, // the profile form's avatar: undefined (unchanged), null (uploading), "" (none), or an upload id
  avatarTurn: 0, // counts avatar choices: only the latest one's upload counts
  session: null,
  rooms: new Map(), // id -> {id, name, private, last_seq, member, unread, dm?: {user, name}}
  invites: [], // [{room: {id, name, private}, by, by_name, ts}]
  views: new Map(), // id -> room view
  current: null,
  list: null,
  editing: null, // seq being edited in the composer
  attachments: [], // files for the next message: {name, progress, id, error}
  replyTo: null, // seq the composer's next message answers
  thread: null, // the open thread: {room, first, msgs: Map seq -> message}
  lastTypingSent: 0,
  pageLen: 50, // history page length: the server's maximum, once known
  // The server's limits (`limits` of /api/server); these defaults are the
  // server's own until it says otherwise.
  limits: {
    ws_frame_bytes_max: 64 << 10,
    message_body_bytes_max: 64 << 10,
    name_bytes_max: 64,
    name_pattern: "[A-Za-z0-9_.-]+",
    password_len_min: 8,
    files_per_message_max: 10,
  },
  // With self-registration open, a registered name can equal a backend
  // (JWT) user's: those are marked, so the one is not taken for the other.
  markExternal: true,
};

// ---- sign in ---------------------------------------------------------------

function saved() {
  try {
    return JSON.parse(localStorage.getItem(SESSION_KEY));
  } catch (_) {
    return null;
  }
}

// The sign-in form in its mode: "login" or "register" (the button, the
// title, the password's autocomplete and the hints follow it).
function authMode(form, mode) {
  const register = mode === "register";
  form.dataset.mode = mode;
  $("#auth-title").textContent = register ? "Create an account" : "Sign in";
  $("#auth-submit").textContent = register ? "Create account" : "Sign in";
  $("#auth-switch-text").textContent = register ? "Have an account?" : "New here?";
  $("#auth-switch").textContent = register ? "Sign in" : "Create an account";
  form.password.autocomplete = register ? "new-password" : "current-password";
  $("#name-hint").hidden = !register;
  const hint = $("#password-hint");
  hint.textContent = `At least ${state.limits.password_len_min} characters.`;
  hint.hidden = !register;
  // Hints describe the fields only where they show.
  for (const [field, id] of [[form.name, "name-hint"], [form.password, "password-hint"]]) {
    if (register) field.setAttribute("aria-describedby", id);
    else field.removeAttribute("aria-describedby");
  }
  form.querySelector(".error").textContent = "";
}

// What is wrong with the form's name and password for `mode`, or "".
function authProblem(form, mode) {
  const name = form.name.value.trim();
  const password = form.password.value;
  if (!name) return "Enter your name.";
  if (mode === "register") {
    const wrong = nameProblem(name);
    if (wrong) return `A name ${wrong}.`;
    const min = state.limits.password_len_min;
    if ([...password].length < min) return `Choose a password of at least ${min} characters.`;
  } else if (!password) {
    return "Enter your password.";
  }
  return "";
}

// What breaks the server's rule for user and room names (`limits` of
// /api/server: bytes at most, and the pattern), or "" for a good name.
function nameProblem(name) {
  const max = state.limits.name_bytes_max;
  const fits = new RegExp(`^(?:${state.limits.name_pattern})$`).test(name);
  if (new TextEncoder().encode(name).length <= max && fits) return "";
  return `is up to ${max} letters, digits, “_”, “.” or “-” (no spaces)`;
}

async function signIn(form) {
  const mode = form.dataset.mode;
  const err = form.querySelector(".error");
  const problem = authProblem(form, mode);
  err.textContent = problem;
  if (problem) return;
  const name = form.name.value.trim();
  const password = form.password.value;
  const button = $("#auth-submit");
  button.disabled = true;
  try {
    const s = await api("POST", mode === "register" ? "/api/register" : "/api/login", {
      body: { name, password },
    });
    const auth = { user: s.user, name: s.name, token: s.token };
    localStorage.setItem(SESSION_KEY, JSON.stringify(auth));
    await start(auth);
  } catch (e) {
    err.textContent = authError(e, mode, name);
  } finally {
    button.disabled = false;
  }
}

// A refused sign-in or sign-up in words a person acts on.
function authError(e, mode, name) {
  if (e.status === 409) return `The name “${name}” is taken. Choose another, or sign in if it is yours.`;
  if (e.status === 401) return "Wrong name or password.";
  if (e.status === 429) return "Too many attempts. Wait a minute and try again.";
  if (e.status === 403 && mode === "register") return "This server does not take new accounts.";
  if (e.status === 0 || e instanceof TypeError) return "The server cannot be reached. Try again.";
  return e.message || String(e);
}

async function signOut() {
  const token = state.auth?.token;
  const pending = state.session?.unacknowledged().length || 0;
  if (pending && !confirm(`${pending} message(s) are not sent yet and will be lost. Sign out anyway?`)) return;
  state.session?.close();
  localStorage.removeItem(SESSION_KEY);
  // Unsent messages are not left behind on a shared computer.
  localStorage.removeItem("rookery.outbox." + state.auth?.user);
  if (token) await api("POST", "/api/logout", { token }).catch(() => null);
  location.reload();
}

const call = (method, path, body) => api(method, path, { token: state.auth.token, body });

// ---- start -----------------------------------------------------------------

async function start(auth) {
  state.auth = auth;
  try {
    await call("GET", "/api/me");
  } catch (e) {
    if (e.status === 401) {
      localStorage.removeItem(SESSION_KEY);
      showAuth();
      return;
    }
  }
  const info = await serverInfo();
  if (info?.history_page_len_max) state.pageLen = Math.min(info.history_page_len_max, 500);
  state.markExternal = info?.registration !== "closed";
  $("#auth").hidden = true;
  $("#app").hidden = false;
  $(".skip").hidden = false;
  $("#me").textContent = auth.name;
  call("GET", `/api/users/${auth.user}`).then(showMyAvatar, () => {});
  state.list = new VirtualList($("#messages"), {
    key: rowKey,
    render: renderRow,
    onTop: loadOlder,
    // Any scroll may bring unread messages into view.
    onBottom: () => markRead(),
  });
  state.session = new Session(
    auth.token,
    {
      onEvent,
      onJoined,
      onState: connectionState,
      onError: notice,
      // A 1009 close: the server's limit may have changed; read it again.
      onTooBig: () =>
        serverInfo().then(() => state.session && (state.session.frameBytesMax = state.limits.ws_frame_bytes_max)),
    },
    { frameBytesMax: state.limits.ws_frame_bytes_max, user: auth.user },
  );
  // Sends a reload interrupted go out again; they show as pending.
  for (const u of state.session.unacknowledged()) {
    track(u.room, { client_id: u.client_id, acked: u.acked }, u.body || "", u.reply_to || null);
  }
  await loadRooms().catch((e) => notice(e.message));
  offerNotifications();
  const wanted = Number(new URLSearchParams(location.hash.slice(1)).get("room"));
  const first = state.rooms.get(wanted) || [...state.rooms.values()].find((r) => r.member);
  if (first) openRoom(first.id);
}

// What the server is, and its limits (kept in `state.limits`).
async function serverInfo() {
  const info = await api("GET", "/api/server").catch(() => null);
  if (info?.limits) Object.assign(state.limits, info.limits);
  return info;
}

function showAuth() {
  $("#auth").hidden = false;
  $("#app").hidden = true;
  $(".skip").hidden = true; // nothing to skip to on the sign-in form
  authMode($("#auth-form"), "login");
  serverInfo().then(() => authMode($("#auth-form"), $("#auth-form").dataset.mode));
  $("#auth-form").name.focus();
}

function connectionState(s) {
  if (s === "unauthorized") {
    // The session ended (logged out elsewhere, expired): sign in again.
    localStorage.removeItem(SESSION_KEY);
    location.reload();
    return;
  }
  const c = $("#conn");
  c.textContent = { online: "online", connecting: "connecting…", offline: "offline" }[s];
  c.dataset.state = s;
  showConnection(s);
  if (s === "online") {
    // Back from a drop: messages missed come from the rejoin (`since`);
    // edits and deletes made meanwhile come with a fresh tail page.
    loadRooms().catch(() => null);
    const v = state.views.get(state.current);
    // Receipts are volatile: those sent while away were never heard. The
    // open room reads its markers now, the others when next opened.
    for (const other of state.views.values()) other.markersStale = true;
    if (v && v.loaded) {
      refreshTail(v).catch(() => null);
      v.markersStale = false;
      loadMarkers(v).catch(() => null);
    }
  }
}

// The connection's state where the room is read, on every screen size:
// hidden while online; otherwise what is going on, and presence (who is
// online) is shown as unknown rather than as it was last heard.
function showConnection(s) {
  const bar = $("#room-conn");
  bar.dataset.state = s;
  bar.textContent =
    s === "online" ? "" : s === "offline" ? "Offline — messages wait and go when you are back" : "Reconnecting…";
  bar.hidden = s === "online";
  const v = state.views.get(state.current);
  if (v) {
    renderOnline(v);
    for (const p of v.pending) state.list.refresh("p:" + p.client_id);
  }
  roomsLater();
}

// ---- rooms -----------------------------------------------------------------

// Every page of a list endpoint (`{key: [...], next: {after} | null}`),
// up to `pagesMax` pages.
async function listAll(path, key, pagesMax = 20) {
  const items = [];
  let after = 0;
  for (let i = 0; i < pagesMax; i++) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await call("GET", `${path}${sep}limit=500&after=${after}`);
    items.push(...page[key]);
    if (!page.next) break;
    after = page.next.after;
  }
  return items;
}

async function loadRooms() {
  const [rooms, dms, unread] = await Promise.all([
    listAll("/api/rooms", "rooms"),
    listAll("/api/dms", "dms"),
    call("GET", "/api/me/unread"),
    loadInvites(),
  ]);
  // From each room's owner: the room list's last_seq may trail it.
  const mine = new Map(unread.rooms.map((u) => [u.room, u]));
  const keep = (r, more) => {
    const known = state.rooms.get(r.id);
    const u = mine.get(r.id);
    state.rooms.set(r.id, {
      ...r,
      member: Boolean(u),
      unread: r.id === state.current ? 0 : u?.unread || 0,
      read: u?.read || 0,
      last_seq: Math.max(r.last_seq, u?.last_seq || 0, known?.last_seq || 0),
      ...more,
    });
  };
  for (const r of rooms) keep(r, {});
  // A direct message shows the other person: their name, and whether they
  // are online (from the room's presence once joined).
  // One the other person opened and we have not (`invited`) is a request:
  // opening it accepts.
  for (const d of dms) {
    const name = d.external && state.markExternal ? `${d.name} (app)` : d.name;
    keep(d.room, { dm: { user: d.user, name, request: d.invited } });
    if (d.online) view(d.room.id).online.add(d.user);
  }
  renderInvites();
  // Rooms we became a member of elsewhere (another tab, an admin's
  // invitation) are followed from now on.
  for (const r of state.rooms.values()) {
    if (r.member && state.session && !state.session.joined(r.id)) state.session.join(r.id);
  }
  renderRooms();
}

// ---- invitations -------------------------------------------------------------

async function loadInvites() {
  const got = await call("GET", "/api/invites");
  state.invites = got.invites;
  renderInvites();
}

function renderInvites() {
  const list = $("#invites");
  list.replaceChildren();
  // Direct-message requests show among the direct messages instead.
  for (const inv of state.invites.filter((i) => !state.rooms.get(i.room.id)?.dm)) {
    const r = inv.room;
    const accept = el("button", { type: "button", class: "accept", text: "Accept" });
    const decline = el("button", { type: "button", class: "decline secondary", text: "Decline" });
    accept.onclick = () => answerInvite(r.id, true);
    decline.onclick = () => answerInvite(r.id, false);
    list.append(
      el(
        "li",
        { "data-room": r.id },
        el("span", { class: "invite-text", text: `${r.private ? "🔒" : "#"} ${r.name} — from ${inv.by_name}` }),
        accept,
        decline,
      ),
    );
  }
  $("#invites-title").hidden = list.children.length === 0;
}

async function answerInvite(room, accept) {
  try {
    await call("POST", `/api/invites/${room}/${accept ? "accept" : "decline"}`);
  } catch (e) {
    notice(e.message);
  }
  state.invites = state.invites.filter((i) => i.room.id !== room);
  renderInvites();
  if (accept) {
    await loadRooms().catch((e) => notice(e.message));
    openRoom(room);
  }
}

async function invite(form) {
  const name = form.name.value.trim();
  if (!name || state.current === null) return;
  try {
    await call("POST", `/api/rooms/${state.current}/members`, { name });
    form.reset();
    // The server answers alike whether the name exists: it does not tell.
    notice(`If ${name} has an account, they are invited.`);
  } catch (e) {
    notice(e.message);
  }
}

// What a room is called in the list and its title: a direct message by
// the other person's name.
function title(r) {
  return r.dm ? "@ " + r.dm.name : (r.private ? "🔒 " : "# ") + r.name;
}

function renderRooms() {
  const focused = document.activeElement?.dataset?.room;
  const mine = $("#my-rooms");
  const others = $("#other-rooms");
  const dms = $("#dms");
  const sorted = [...state.rooms.values()].sort((a, b) => title(a).localeCompare(title(b)));
  mine.replaceChildren();
  others.replaceChildren();
  dms.replaceChildren();
  for (const r of sorted) {
    const button = el(
      "button",
      { class: "room-link", "data-room": r.id, type: "button" },
      el("span", { class: "room-name", text: title(r) }),
    );
    if (r.dm) {
      const known = state.session?.state === "online";
      const on = known ? view(r.id).online.has(r.dm.user) : "unknown";
      const said = on === "unknown" ? "presence unknown" : on ? "online" : "offline";
      button.prepend(el("span", { class: "presence", "data-online": on, title: said }));
      if (r.dm.request) button.append(el("span", { class: "request", text: "new" }));
    }
    if (r.unread > 0) {
      // The name a screen reader gives is the text seen, and "unread".
      button.append(
        el("span", { class: "badge" }, r.unread > 999 ? "999+" : String(r.unread), el("span", { class: "sr-only", text: " unread" })),
      );
    }
    if (r.id === state.current) button.setAttribute("aria-current", "true");
    button.onclick = () => openRoom(r.id);
    const li = el("li", {}, button);
    if (r.dm?.request) {
      const decline = el("button", { type: "button", class: "decline secondary", text: "✕", title: "Decline" });
      decline.setAttribute("aria-label", `Decline ${r.dm.name}'s direct message`);
      decline.onclick = () => declineDm(r.id);
      li.classList.add("dm-request");
      li.append(decline);
    }
    (r.dm ? dms : r.member ? mine : others).append(li);
  }
  $("#other-rooms-title").hidden = others.children.length === 0;
  // The tab says how much is unread, whichever room is open.
  const unread = [...state.rooms.values()].reduce((n, r) => n + (r.member ? r.unread : 0), 0);
  document.title = unread > 0 ? `(${unread > 999 ? "999+" : unread}) Rookery` : "Rookery";
  // Drawn anew: a keyboard user keeps their place.
  if (focused) document.querySelector(`.room-link[data-room="${focused}"]`)?.focus();
}

// The room list, drawn again on the next frame (once however many
// messages arrive before it).
function roomsLater() {
  if (state.roomsFrame) return;
  state.roomsFrame = requestAnimationFrame(() => {
    state.roomsFrame = 0;
    renderRooms();
  });
}

// ---- the directory -----------------------------------------------------------

// Your profile: opened from your name, saved with PUT /api/me/profile.
async function openProfile() {
  const form = $("#profile");
  if (!form.hidden) {
    form.hidden = true;
    return;
  }
  try {
    const p = await call("GET", `/api/users/${state.auth.user}`);
    form.display_name.value = p.display_name;
    form.status.value = p.status;
    form.avatar.value = "";
    state.avatar = undefined; // unchanged until a file is chosen or cleared
    state.avatarTurn++; // an upload still running for an earlier opening is ignored
    previewAvatar(p.avatar_url);
    form.hidden = false;
    form.display_name.focus();
  } catch (e) {
    notice(e.message);
  }
}

async function saveProfile(form) {
  if (state.avatar === null) {
    notice("wait for the avatar to upload");
    return;
  }
  try {
    const p = await call("PUT", "/api/me/profile", {
      display_name: form.display_name.value.trim(),
      status: form.status.value.trim(),
      ...(state.avatar !== undefined && { avatar: state.avatar }),
    });
    showMyAvatar(p);
    form.hidden = true;
  } catch (e) {
    notice(e.message);
  }
}

// An avatar chosen in the profile form: uploaded at once (the server makes
// its thumbnail), saved with the profile. null while it uploads.
// Only the latest choice counts: an upload that ends after another
// choice (a new file, "No avatar", the form opened again) is dropped.
function chooseAvatar(file) {
  if (!file) return;
  const turn = ++state.avatarTurn;
  state.avatar = null;
  previewAvatar(null);
  upload(state.auth.token, file, () => {}).then(
    (up) => {
      const usable = Boolean(up.thumbnail);
      if (turn !== state.avatarTurn || !usable) {
        // Never to be an avatar: the server need not keep it a day.
        forgetUpload(up);
        if (turn === state.avatarTurn) {
          state.avatar = undefined;
          notice("an avatar is an image (PNG, JPEG, GIF or WebP)");
        }
        return;
      }
      state.avatar = up.id;
      previewAvatar(up.thumbnail);
    },
    (e) => {
      if (turn !== state.avatarTurn) return;
      state.avatar = undefined;
      notice(e.message);
    },
  );
}

function previewAvatar(url) {
  const img = $("#avatar-preview");
  const turn = state.avatarTurn;
  img.hidden = !url;
  img.removeAttribute("src");
  if (url) blobOf(url).then((u) => u && turn === state.avatarTurn && (img.src = u));
}

// Your name in the header, with your avatar when you have one.
function showMyAvatar(p) {
  const me = $("#me");
  me.replaceChildren(state.auth.name);
  if (!p.avatar_url) return;
  const img = el("img", { class: "avatar", alt: "" });
  blobOf(p.avatar_url).then((u) => u && (img.src = u));
  me.prepend(img);
}

// Names offered while typing whom to message: a search of the directory,
// once typing pauses (the server rate-limits searches).
function suggestLater(input) {
  clearTimeout(suggestLater.timer);
  const q = input.value.trim();
  if (!q) return;
  suggestLater.timer = setTimeout(async () => {
    try {
      const page = await call("GET", `/api/users?q=${encodeURIComponent(q)}&limit=8`);
      $("#dm-suggestions").replaceChildren(
        ...page.users
          .filter((u) => u.id !== state.auth.user && !u.external)
          .map((u) => el("option", { value: u.name, label: u.display_name ? `${u.display_name} (${u.name})` : u.name })),
      );
    } catch (_) {
      // A refused search (rate-limited) only means no suggestions.
    }
  }, 250);
}

// Declines a direct message someone opened with us: it leaves the list.
async function declineDm(room) {
  try {
    await call("POST", `/api/invites/${room}/decline`);
  } catch (e) {
    notice(e.message);
  }
  state.rooms.delete(room);
  renderRooms();
}

// Opens (or finds) the direct message with the person named.
async function openDm(form) {
  const name = form.name.value.trim();
  if (!name) return;
  try {
    const d = await call("POST", "/api/dms", { name });
    form.reset();
    const known = state.rooms.get(d.room.id);
    state.rooms.set(d.room.id, {
      ...d.room,
      member: true,
      unread: known?.unread || 0,
      dm: { user: d.user, name: d.name },
    });
    if (d.online) view(d.room.id).online.add(d.user);
    if (!state.session.joined(d.room.id)) state.session.join(d.room.id);
    state.invites = state.invites.filter((i) => i.room.id !== d.room.id);
    renderRooms();
    openRoom(d.room.id);
  } catch (e) {
    notice(e.status === 404 ? `Nobody is called ${name}.` : e.message);
  }
}

async function createRoom(form) {
  const name = form.name.value.trim();
  const err = form.querySelector(".error");
  err.textContent = "";
  if (!name) return;
  const wrong = nameProblem(name);
  if (wrong) {
    err.textContent = `A room name ${wrong}.`;
    return;
  }
  try {
    const r = await call("POST", "/api/rooms", { name, private: form.private.checked });
    form.reset();
    state.rooms.set(r.id, { ...r, member: true, unread: 0 });
    state.session.join(r.id);
    renderRooms();
    openRoom(r.id);
  } catch (e) {
    err.textContent =
      e.status === 409
        ? `There is already a room called “${name}”.`
        : e.status === 429
          ? "You have created many rooms just now. Wait a minute and try again."
          : e.message;
  }
}

// A message over the room; `sticky` ones (why you lost a room) stay until
// the next message.
function notice(text, sticky = false) {
  const n = $("#notice");
  n.textContent = text;
  n.hidden = !text;
  clearTimeout(notice.timer);
  if (text && !sticky) notice.timer = setTimeout(() => (n.hidden = true), 5000);
}

// ---- a room's view ---------------------------------------------------------

function view(room) {
  let v = state.views.get(room);
  if (!v) {
    v = {
      room,
      msgs: new Map(),
      lo: 1,
      hi: 0,
      pending: [],
      loaded: false,
      older: null,
      members: new Map(),
      online: new Set(),
      typing: new Map(),
      firstUnread: 0,
      readSent: 0,
      // user -> the seq they have read up to, and seq -> who is there.
      markers: new Map(),
      seenAt: new Map(),
    };
    state.views.set(room, v);
  }
  return v;
}

async function openRoom(id) {
  const r = state.rooms.get(id);
  if (!r) return;
  if (state.thread && state.thread.room !== id) closeThread();
  if (state.current !== id) closeMembers();
  stopReply();
  // Opening a direct-message request accepts it; a public room you are not
  // in opens as a preview (its history, read over HTTP) with a Join button.
  if (!r.member && r.dm && !(await joinRoom(r))) return;
  if (!r.member && !r.dm) {
    // A ban ends previews too: say so rather than show an empty room.
    const standing = await call("GET", `/api/rooms/${id}`).catch(() => null);
    r.banned = Boolean(standing?.banned);
    if (r.banned) {
      notice(`You are banned from ${r.name}.`, true);
      $("#join-bar").hidden = true;
      return;
    }
  }
  notice("");
  if (r.member && !state.session.joined(id)) state.session.join(id);
  if (state.editing !== null) {
    stopEdit();
    $("#composer").body.value = "";
  }
  const v = view(id);
  state.current = id;
  history.replaceState(null, "", "#room=" + id);
  $("#app").classList.add("show-room");
  $("#room-title").textContent = title(r);
  $("#search-here-label").hidden = false;
  // The first message after our read marker (our own posts count as
  // read: the server's marker is past them).
  // What this tab has read since the list was read counts too.
  const read = Math.max(r.read || r.last_seq - r.unread, v.readSent);
  v.firstUnread = r.unread > 0 && read < r.last_seq ? read + 1 : 0;
  r.unread = 0;
  renderRooms();
  renderOnline(v);
  renderTyping(v);
  renderInviteForm(v);
  state.list.reset(count(v));
  if (!v.loaded) {
    $("#composer").hidden = true; // until there is a history to send after
    const previewing = !r.member;
    await Promise.all([loadMembers(v), refreshTail(v), loadMarkers(v)]).catch((e) => {
      // Once removed mid-load, the `left` frame's notice says why; a
      // refused request would only hide it.
      if (r.member) notice(e.message);
      else if (previewing && e.code === "banned") {
        // A preview of a room you are banned from: nothing to read or join.
        notice(`You are banned from ${r.name}.`, true);
        r.banned = true;
      } else if (previewing) notice(e.message);
    });
    // Our own marker, as stored: receipts are sent only past it.
    v.readSent = Math.max(v.readSent, v.markers.get(state.auth.user) || 0);
    // A backlog longer than the newest page: its first unread message and
    // what follows are read too, so the room opens there (the rows between
    // fill in behind).
    if (v.firstUnread && v.firstUnread < v.lo) await loadAround(v, v.firstUnread).catch(() => null);
    v.loaded = true;
    // Messages heard of while the page was read.
    if (r.last_seq > v.hi) {
      v.hi = r.last_seq;
      await fillGaps(v).catch(() => null);
    }
  }
  if (v.loaded && v.markersStale) {
    v.markersStale = false;
    loadMarkers(v).catch(() => null);
  }
  if (state.current === id) {
    // A `left` frame (removed, banned) may have come while the history
    // loaded: the composer stays hidden then.
    $("#composer").hidden = !r.member;
    $("#join-bar").hidden = r.member || r.private || Boolean(r.banned);
    $("#join-text").textContent = `You are reading #${r.name} as a guest: join to write and to follow it live.`;
    $("#members-open").hidden = !r.member || Boolean(r.dm);
    state.list.reset(count(v));
    // With unread messages, start at the first of them (the reader scrolls
    // down through the rest, which marks them read); else at the bottom.
    if (v.firstUnread >= v.lo && v.firstUnread <= v.hi) state.list.scrollToIndex(v.firstUnread - v.lo);
    else state.list.scrollToBottom();
    if (r.member) {
      markRead();
      $("#composer").body.focus();
    }
  }
}

// Joins `r` (a public room, or a direct message someone opened with us);
// false, with the reason shown, when refused.
async function joinRoom(r) {
  try {
    await call("POST", `/api/rooms/${r.id}/join`);
    r.member = true;
    if (r.dm) r.dm.request = false;
    return true;
  } catch (e) {
    notice(e.code === "banned" ? `You are banned from ${r.name}.` : e.message, e.code === "banned");
    return false;
  }
}

// The preview's Join: a member from now on, followed live from the newest
// message the preview read.
async function joinShown() {
  const r = state.rooms.get(state.current);
  if (!r || r.member || !(await joinRoom(r))) return;
  const v = view(r.id);
  state.session.join(r.id, v.hi || null);
  renderRooms();
  $("#join-bar").hidden = true;
  $("#composer").hidden = false;
  $("#members-open").hidden = false;
  loadMembers(v).catch(() => null);
  $("#composer-body").focus();
}

// ---- members ---------------------------------------------------------------

function closeMembers() {
  $("#members").hidden = true;
}

// The open room's members with their roles; an admin or the owner acts on
// those of lower rank (role, remove, ban) and lifts bans; anyone leaves.
async function openMembers() {
  closeThread();
  const v = view(state.current);
  $("#members").hidden = false;
  $("#members-error").textContent = "";
  try {
    await loadMembers(v);
    const mine = v.roles.get(state.auth.user);
    v.bans = mine === "admin" || mine === "owner" ? await listAll(`/api/rooms/${v.room}/bans`, "bans", 4) : [];
  } catch (e) {
    $("#members-error").textContent = e.message;
  }
  renderMembers(v);
  $("#members-close").focus();
}

const RANK = { owner: 3, admin: 2, member: 1 };

function renderMembers(v) {
  const mine = RANK[v.roles.get(state.auth.user)] || 0;
  const act = (text, label, run) =>
    el("button", { type: "button", class: "secondary", text, ariaLabel: label, onclick: () => memberAction(v, run) });
  const rows = [...v.roles.entries()]
    .sort((a, b) => (RANK[b[1]] || 0) - (RANK[a[1]] || 0) || nameOf(v, a[0]).localeCompare(nameOf(v, b[0])))
    .map(([user, role]) => {
      const name = nameOf(v, user);
      const li = el(
        "li",
        { "data-user": user },
        el("span", { class: "who", text: name + (user === state.auth.user ? " (you)" : "") }),
        el("span", { class: "role", text: role }),
      );
      // Only on those of lower rank (the server refuses the rest anyway).
      if (mine >= RANK.admin && (RANK[role] || 0) < mine) {
        const path = `/api/rooms/${v.room}/members/${user}`;
        if (role === "member") li.append(act("Make admin", `Make admin: ${name}`, () => call("PUT", path, { role: "admin" })));
        if (role === "admin") li.append(act("Make member", `Make member: ${name}`, () => call("PUT", path, { role: "member" })));
        li.append(act("Remove", `Remove: ${name}`, () => call("DELETE", path)));
        li.append(act("Ban", `Ban: ${name}`, () => call("PUT", `/api/rooms/${v.room}/bans/${user}`)));
      }
      return li;
    });
  $("#member-list").replaceChildren(...rows);
  const bans = (v.bans || []).map((b) => {
    const name = nameOf(v, b.user);
    return el(
      "li",
      { "data-user": b.user },
      el("span", { class: "who", text: name }),
      act("Unban", `Unban: ${name}`, () => call("DELETE", `/api/rooms/${v.room}/bans/${b.user}`)),
    );
  });
  $("#ban-list").replaceChildren(...bans);
  $("#bans-title").hidden = bans.length === 0;
}

// Runs one change of standing, then reads the members again.
async function memberAction(v, run) {
  $("#members-error").textContent = "";
  try {
    await run();
  } catch (e) {
    $("#members-error").textContent = e.message;
  }
  if (v.room === state.current && !$("#members").hidden) await openMembers();
}

// Leaves the open room (the owner hands ownership on first: the server
// says so).
async function leaveRoom() {
  const r = state.rooms.get(state.current);
  if (!r || !confirm(`Leave ${title(r)}?`)) return;
  try {
    await call("POST", `/api/rooms/${r.id}/leave`);
  } catch (e) {
    $("#members-error").textContent =
      e.status === 409 ? "You own this room: make someone else its owner before you leave." : e.message;
    return;
  }
  closeMembers();
  // The `left` event (reason "left") updates the list and the view.
}

// Rows for the seqs lo..hi (the pending sends come after them).
function seqRows(v) {
  return Math.max(0, v.hi - v.lo + 1);
}

function count(v) {
  return seqRows(v) + v.pending.length;
}

function rowKey(i) {
  const v = state.views.get(state.current);
  const n = seqRows(v);
  return i < n ? v.lo + i : "p:" + v.pending[i - n].client_id;
}

async function loadMembers(v) {
  const members = await listAll(`/api/rooms/${v.room}/members`, "members");
  v.roles = new Map();
  for (const m of members) {
    v.members.set(m.user, m.external && state.markExternal ? `${m.name} (app)` : m.name);
    v.roles.set(m.user, m.role);
  }
  v.membersAt = Date.now();
  if (v.room === state.current) renderInviteForm(v);
}

// ---- read receipts: who has read up to where ---------------------------------

async function loadMarkers(v) {
  const markers = await listAll(`/api/rooms/${v.room}/receipts`, "receipts", MARKER_PAGES_MAX);
  for (const m of markers) moveMarker(v, m.user, m.seq);
}

// `user` has read up to `seq` (a receipt, or their own message). Markers
// never move back; the rows they leave and reach are drawn again.
function moveMarker(v, user, seq) {
  const was = v.markers.get(user) || 0;
  if (seq <= was) return;
  v.markers.set(user, seq);
  const left = v.seenAt.get(was);
  if (left) {
    left.delete(user);
    if (!left.size) v.seenAt.delete(was);
  }
  if (!v.seenAt.has(seq)) v.seenAt.set(seq, new Set());
  v.seenAt.get(seq).add(user);
  if (v.room === state.current) {
    state.list.refresh(was);
    state.list.refresh(seq);
  }
}

// "Seen by …" under the message others have read up to (its author and
// we are not named).
function seenBy(v, m) {
  const users = [...(v.seenAt.get(m.seq) || [])].filter((u) => u !== state.auth.user && u !== m.from);
  if (!users.length) return "";
  const names = users.map((u) => nameOf(v, u)).sort();
  const more = names.length - SEEN_NAMES_MAX;
  const text = more > 0 ? `${names.slice(0, SEEN_NAMES_MAX).join(", ")} and ${more} more` : names.join(", ");
  return el("div", { class: "seen", text: "Seen by " + text, title: names.join(", ") });
}

// Admins and the owner invite people.
function renderInviteForm(v) {
  const role = v.roles?.get(state.auth.user);
  $("#invite").hidden = role !== "admin" && role !== "owner";
}

function nameOf(v, user) {
  if (user === state.auth.user) return state.auth.name;
  // User 0 is the server itself (a backend posting with an API key).
  if (user === 0) return "server";
  const name = v.members.get(user);
  if (name) return name;
  // Asked once per user: a former member is not in the list, however
  // often it is read.
  v.asked ??= new Set();
  if (!v.asked.has(user)) {
    v.asked.add(user);
    wantMembers(v);
  }
  return "user " + user;
}

// Someone not known by name yet (they joined since the list was read):
// read the members again, at most once every few seconds, then draw again.
function wantMembers(v) {
  if (v.membersTimer) return;
  const wait = Math.max(0, (v.membersAt || 0) + 2000 - Date.now());
  v.membersTimer = setTimeout(() => {
    loadMembers(v)
      .then(() => redraw(v), () => null)
      .finally(() => (v.membersTimer = null));
  }, wait);
}

// Puts history messages into the view; returns how many seqs below `lo`
// were added.
function absorb(v, messages) {
  const oldLo = v.lo;
  for (const m of messages) {
    const had = v.msgs.get(m.seq);
    // A thread counted as of a later reply (live) keeps that count.
    if (had && (had.last_reply || 0) > (m.last_reply || 0)) {
      Object.assign(m, { replies: had.replies, last_reply: had.last_reply });
    }
    // A page read before an edit or a delete that came live since must not
    // bring the old text back: a delete is final, an edit beats no edit.
    if (had?.deleted && !m.deleted) Object.assign(m, { body: null, deleted: true });
    else if (had?.edited && !m.edited && !m.deleted) Object.assign(m, { body: had.body, edited: true });
    v.msgs.set(m.seq, m);
    if (m.seq > v.hi) v.hi = m.seq;
    if (m.seq < v.lo || v.lo > v.hi) v.lo = Math.min(v.lo, m.seq);
  }
  if (v.msgs.size && v.lo > v.hi) {
    for (const seq of v.msgs.keys()) v.lo = Math.min(v.lo, seq);
  }
  return Math.max(0, oldLo - v.lo);
}

// The newest page (on open and after a reconnect), then whatever is
// missing between it and the newest seq known.
async function refreshTail(v) {
  const page = await call("GET", `/api/rooms/${v.room}/messages?limit=${state.pageLen}`);
  const before = { lo: v.lo, hi: v.hi };
  if (v.msgs.size === 0 && page.messages.length) {
    v.lo = page.messages[page.messages.length - 1].seq;
  }
  absorb(v, page.messages);
  if (v.room === state.current) {
    if (before.hi >= before.lo && v.lo < before.lo) state.list.prepend(before.lo - v.lo);
    state.list.resize(count(v));
    for (const m of page.messages) redrawSeq(m.seq);
  }
  await fillGaps(v);
}

// Fetches the seqs in lo..hi that are not loaded (heard of by seq before
// their page was read), a page at a time, newest gap first; one loop per
// room at a time.
async function fillGaps(v) {
  if (v.filling) return v.filling;
  v.filling = (async () => {
    for (let guard = 0; guard < 1000; guard++) {
      let missing = 0;
      for (let s = v.hi; s >= v.lo; s--) {
        if (!v.msgs.has(s)) {
          missing = s;
          break;
        }
      }
      if (!missing) return;
      const limit = Math.min(state.pageLen, missing - v.lo + 1);
      const page = await call("GET", `/api/rooms/${v.room}/messages?before=${missing + 1}&limit=${limit}`);
      absorb(v, page.messages);
      if (v.room === state.current) {
        state.list.resize(count(v));
        for (const m of page.messages) redrawSeq(m.seq);
      }
      if (page.messages.length === 0) return;
    }
  })().finally(() => (v.filling = null));
  return v.filling;
}

// Scrolled to the top: the page before the oldest loaded message.
function loadOlder() {
  const v = state.views.get(state.current);
  if (!v || !v.loaded || v.older || v.lo <= 1) return;
  const room = v.room;
  v.older = call("GET", `/api/rooms/${room}/messages?before=${v.lo}&limit=${state.pageLen}`)
    .then((page) => {
      const oldLo = v.lo;
      const added = absorb(v, page.messages);
      if (state.current === room) {
        state.list.prepend(added);
        // The row that was first gets its day line and grouping right.
        state.list.refresh(oldLo);
      }
    })
    .catch((e) => notice("history: " + e.message))
    .finally(() => (v.older = null));
}

// Names became known: draw again what shows them.
function redraw(v) {
  if (v.room !== state.current) return;
  for (const k of state.list.rows.keys()) state.list.refresh(k);
  renderOnline(v);
  renderTyping(v);
}

function renderRow(i) {
  const v = state.views.get(state.current);
  const n = seqRows(v);
  if (i >= n) return pendingRow(v, v.pending[i - n]);
  const seq = v.lo + i;
  const m = v.msgs.get(seq);
  if (!m) return el("div", { class: "msg placeholder", "data-seq": seq, text: "…", ariaHidden: "true" });
  const mine = m.from === state.auth.user;
  const prev = v.msgs.get(seq - 1);
  const newDay = !prev || dayOf(prev.ts) !== dayOf(m.ts);
  // Consecutive messages of one author within a few minutes share the
  // first one's name and time (shown on hover and to screen readers).
  const grouped =
    !newDay && prev.from === m.from && m.ts - prev.ts < GROUP_MS && seq !== v.firstUnread && !m.reply_to;
  const name = nameOf(v, m.from);
  const when = el("time", {
    class: "when",
    text: clock(m.ts),
    dateTime: new Date(m.ts).toISOString(),
    title: fullDate(m.ts),
  });
  const row = el(
    "div",
    { class: "msg" + (mine ? " mine" : "") + (grouped ? " grouped" : ""), "data-seq": seq, tabIndex: -1, role: "article" },
    newDay ? el("div", { class: "day", text: dayName(m.ts) }) : "",
    grouped
      ? el("div", { class: "meta" }, when)
      : el(
          "div",
          { class: "meta" },
          el("b", { text: name }),
          " ",
          when,
          m.edited && !m.deleted ? el("span", { class: "edited", text: " (edited)" }) : "",
        ),
    quoteOf(v, m),
    bodyOf(m),
  );
  if (m.body && mentions(m.body, state.auth.name)) row.classList.add("mentions-me");
  // A grouped message has no name line: "(edited)" goes under its text.
  if (grouped && m.edited && !m.deleted) row.querySelector(".body").after(el("div", { class: "edited", text: "(edited)" }));
  const said = m.deleted || m.body === null ? "message deleted" : firstLine(m.body).slice(0, 80);
  row.setAttribute("aria-label", `${name}, ${fullDate(m.ts)}${m.edited ? ", edited" : ""}: ${said}`);
  if (m.reactions?.length && !m.deleted && m.body !== null) {
    row.append(
      el(
        "div",
        { class: "reactions" },
        ...m.reactions.map((r) =>
          el("button", {
            type: "button",
            class: "reaction" + (r.me ? " me" : ""),
            text: `${r.emoji} ${r.count}`,
            title: r.me ? "Take your reaction off" : "React with " + r.emoji,
            ariaPressed: String(!!r.me),
            onclick: () => react(v.room, seq, r.emoji, !r.me),
          }),
        ),
      ),
    );
  }
  if (m.replies > 0) {
    const n = m.replies;
    row.append(
      el("button", {
        type: "button",
        class: "replies link",
        text: `${n} ${n === 1 ? "reply" : "replies"}`,
        onclick: () => openThread(v.room, seq),
      }),
    );
  }
  const files = filesOf(m);
  if (files) row.append(files);
  const seen = seenBy(v, m);
  if (seen) row.append(seen);
  if (seq === v.firstUnread) row.classList.add("first-unread");
  const live = !m.deleted && m.body !== null;
  const actions = el("div", { class: "actions" });
  // Named for what they act on; out of the Tab order until their message
  // has the focus (arrow keys move between messages).
  const action = (text, label, onclick) =>
    el("button", { type: "button", text, ariaLabel: `${label} “${said}”`, tabIndex: -1, onclick });
  if (live) {
    actions.append(
      action("react", `React to ${name}'s message`, (e) => pickReaction(e.currentTarget, v.room, seq)),
      action("reply", `Reply to ${name}'s message`, () => startReply(seq)),
    );
  }
  if (mine && live) {
    actions.append(
      action("edit", "Edit your message", () => startEdit(seq)),
      action("delete", "Delete your message", () => remove(seq)),
    );
  }
  if (actions.childElementCount) row.append(actions);
  for (const b of row.querySelectorAll("button")) b.tabIndex = -1;
  return row;
}

// A message's text, its Markdown subset drawn (no HTML is ever parsed).
function bodyOf(m) {
  if (m.deleted || m.body === null) return el("div", { class: "body deleted", text: "message deleted" });
  return el("div", { class: "body" }, ...markdown(m.body, state.auth.name).nodes);
}

// A message's row and the next one (whose grouping and day line depend on
// it), drawn again.
function redrawSeq(seq) {
  state.list.refresh(seq);
  state.list.refresh(seq + 1);
}

// A send not acknowledged yet: "sending…" (or "waiting for the
// connection"), or refused with the reason and what can be done.
function pendingRow(v, p) {
  const online = state.session?.state === "online";
  const status = p.failed ? `not sent: ${p.failed}` : online ? "sending…" : "waiting for the connection…";
  const row = el(
    "div",
    { class: "msg mine pending" + (p.failed ? " failed" : ""), "data-pending": p.client_id, role: "article" },
    el("div", { class: "meta" }, el("b", { text: state.auth.name }), el("span", { class: "status", text: " " + status })),
    el("div", { class: "body", text: p.body.length > 2000 ? p.body.slice(0, 2000) + "…" : p.body }),
  );
  row.setAttribute("aria-label", `${state.auth.name}, ${status}`);
  if (p.failed) {
    row.append(
      el(
        "div",
        { class: "row failed-actions" },
        el("button", { type: "button", class: "secondary", text: "Edit and resend", onclick: () => dropPending(v, p, true) }),
        el("button", { type: "button", class: "secondary", text: "Discard", onclick: () => dropPending(v, p, false) }),
      ),
    );
  }
  return row;
}

// The reactions offered by a message's "react" action.
// Spelled as the server stores them (VS16 after each): a chip and the
// picker name the same reaction.
const QUICK_REACTIONS = ["👍", "❤", "😂", "🎉", "😮", "😢", "🙏", "👀"].map((e) => e + "\uFE0F");

// A row of quick reactions under the "react" button; one click reacts.
function pickReaction(button, room, seq) {
  const open = button.parentElement.querySelector(".picker");
  if (open) return open.remove();
  const mine = new Set((view(room).msgs.get(seq)?.reactions || []).filter((r) => r.me).map((r) => r.emoji));
  const picker = el(
    "div",
    { class: "picker", role: "group", ariaLabel: "React with" },
    ...QUICK_REACTIONS.map((emoji) =>
      el("button", {
        type: "button",
        text: emoji,
        onclick: () => {
          picker.remove();
          react(room, seq, emoji, !mine.has(emoji));
        },
      }),
    ),
  );
  button.parentElement.append(picker);
}

// Puts our reaction on (or takes it off); the room's `react` event shows
// it. Once acknowledged ours is as asked, whether or not it changed (it
// may have been so already, from another tab).
function react(room, seq, emoji, on) {
  state.session
    .request({ type: "react", room, seq, emoji, on })
    .then(() => {
      const r = view(room).msgs.get(seq)?.reactions?.find((x) => x.emoji === emoji);
      if (r && r.me !== on) {
        r.me = on;
        if (room === state.current) state.list.refresh(seq);
      }
    })
    .catch((e) => notice("reaction: " + e.message));
}

// A `react` event applied to the message it is about: the event carries
// the count after the change (set, not added: a page read meanwhile
// already counts it).
function applyReaction(m, f) {
  const list = (m.reactions = m.reactions || []);
  let r = list.find((x) => x.emoji === f.emoji);
  if (!r) list.push((r = { emoji: f.emoji, count: 0, me: false }));
  r.count = f.count;
  if (f.by === state.auth.user) r.me = f.on;
  m.reactions = list.filter((x) => x.count > 0);
}

// A reply's quote of what it answers: who wrote it and its first line;
// a click opens the thread.
function quoteOf(v, m) {
  if (!m.reply_to) return "";
  const q = m.quote;
  const text = !q ? "an earlier message" : q.text === null ? "message deleted" : q.text;
  return el(
    "button",
    {
      type: "button",
      class: "quote",
      title: "Open the thread",
      onclick: () => openThread(v.room, m.thread || m.reply_to),
    },
    el("b", { text: q ? nameOf(v, q.from) + ": " : "" }),
    el("span", { text }),
  );
}

// The first non-blank line of a body, as the server quotes it (it cuts at
// 200 bytes; here at 200 characters, for what only this tab shows).
function firstLine(body) {
  const line = body.split("\n").map((l) => l.trim()).find((l) => l) || "";
  return line.slice(0, 200);
}

// Messages of one author this close together are shown as one group.
const GROUP_MS = 5 * 60 * 1000;

// The time of day, in the reader's locale (24-hour where that is the
// custom); a date goes with it in tooltips and day lines.
function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "numeric", minute: "2-digit" });
}

function fullDate(ms) {
  return new Date(ms).toLocaleString([], { dateStyle: "full", timeStyle: "short" });
}

// The local day of `ms`, as a key.
function dayOf(ms) {
  const d = new Date(ms);
  return d.getFullYear() * 10000 + d.getMonth() * 100 + d.getDate();
}

// A day line: "Today", "Yesterday", or the date.
function dayName(ms) {
  const today = dayOf(Date.now());
  const day = dayOf(ms);
  if (day === today) return "Today";
  if (day === dayOf(Date.now() - 86400000)) return "Yesterday";
  const d = new Date(ms);
  const sameYear = d.getFullYear() === new Date().getFullYear();
  return d.toLocaleDateString([], { weekday: "long", month: "long", day: "numeric", ...(sameYear ? {} : { year: "numeric" }) });
}

// ---- events from the socket ------------------------------------------------

function onJoined(j) {
  const r = state.rooms.get(j.room);
  if (r && j.last_seq > r.last_seq) r.last_seq = j.last_seq;
  const v = view(j.room);
  v.online = new Set(j.online);
  if (j.room === state.current) renderOnline(v);
  if (v.loaded && j.last_seq > v.hi) {
    v.hi = j.last_seq;
    if (j.room === state.current) state.list.resize(count(v));
    fillGaps(v).catch(() => null);
  }
}

function onEvent(f) {
  const v = state.views.get(f.room);
  switch (f.type) {
    case "msg":
      return onMessage(f);
    case "edit":
    case "delete":
      if (v && v.msgs.has(f.seq)) {
        const m = v.msgs.get(f.seq);
        if (f.type === "edit") Object.assign(m, { body: f.body, edited: true });
        else Object.assign(m, { body: null, deleted: true });
        if (f.room === state.current) state.list.refresh(f.seq);
      }
      if (v) {
        // Replies quoting it show the change.
        const text = f.type === "edit" ? firstLine(f.body) : null;
        for (const m of v.msgs.values()) {
          if (m.reply_to === f.seq && m.quote) {
            m.quote = { ...m.quote, text };
            if (f.room === state.current) state.list.refresh(m.seq);
          }
        }
      }
      threadChanged(f);
      return;
    case "react":
      if (v && v.msgs.has(f.seq)) {
        applyReaction(v.msgs.get(f.seq), f);
        if (f.room === state.current) state.list.refresh(f.seq);
      }
      return;
    case "receipt":
      moveMarker(view(f.room), f.user, f.seq);
      return;
    case "typing":
      if (f.user === state.auth.user) return;
      view(f.room).typing.set(f.user, Date.now() + TYPING_SHOW_MS);
      if (f.room === state.current) renderTyping(view(f.room));
      return;
    case "presence": {
      const pv = view(f.room);
      if (f.state === "online") pv.online.add(f.user);
      else pv.online.delete(f.user);
      if (f.room === state.current) renderOnline(pv);
      if (state.rooms.get(f.room)?.dm) roomsLater();
      return;
    }
    case "left": {
      // Removed, banned, left (from another tab) or deleted: the room is no
      // longer ours; say why.
      const r = state.rooms.get(f.room);
      if (r) {
        r.member = false;
        r.banned = f.reason === "banned";
      }
      // A private room, or any deleted one, leaves the list.
      if (r?.private || f.reason === "deleted") state.rooms.delete(f.room);
      renderRooms();
      if (f.room === state.current) {
        $("#composer").hidden = true;
        $("#invite").hidden = true;
        $("#members-open").hidden = true;
        closeMembers();
        // A public room you left or were removed from can be read on, and
        // joined again (a ban or a deletion ends that).
        $("#join-bar").hidden = !((f.reason === "left" || f.reason === "removed") && r && !r.private);
        const why = {
          banned: "You were banned from this room.",
          removed: "You were removed from this room.",
          left: "You left this room.",
          deleted: "This room was deleted.",
        }[f.reason] || "You are no longer in this room.";
        notice(why, f.reason !== "left");
      }
      return;
    }
    case "invited":
      notice(`${f.by_name} invited you to ${f.name}.`);
      loadInvites().catch(() => null);
      return;
    case "dm":
      // Someone opened a direct message with us: it joins the list now.
      loadRooms().catch(() => null);
      return;
  }
}

function onMessage(f) {
  if (!state.views.get(f.room)?.loaded) threadSaw(f.room, f);
  const r = state.rooms.get(f.room);
  const mine = f.from === state.auth.user;
  if (r && f.seq > r.last_seq) {
    r.last_seq = f.seq;
    const seen = f.room === state.current && document.visibilityState === "visible";
    if (!mine && !seen) {
      r.unread += 1;
      roomsLater();
    }
  }
  if (!mine) notify(f);
  // Posting counts as reading: no receipt is sent for it.
  moveMarker(view(f.room), f.from, f.seq);
  const v = state.views.get(f.room);
  if (!v || !v.loaded) return;
  const m = {
    seq: f.seq,
    from: f.from,
    ts: f.ts,
    body: f.body,
    edited: !!f.edited,
    deleted: !!f.deleted,
    reply_to: f.reply_to,
    thread: f.thread,
    quote: f.quote,
    reactions: f.reactions || [],
    files: f.files || [],
  };
  const had = v.msgs.get(f.seq);
  if (had) {
    // An event is shared by every subscriber: what is ours, and the
    // thread's count, come from what we held.
    Object.assign(m, { replies: had.replies, last_reply: had.last_reply });
    const mineOf = new Set((had.reactions || []).filter((r) => r.me).map((r) => r.emoji));
    for (const r of m.reactions) r.me = mineOf.has(r.emoji);
  }
  v.msgs.set(f.seq, m);
  const first = f.thread && v.msgs.get(f.thread);
  if (first && (first.last_reply || 0) < f.seq) {
    // Counted once: a page counts up to its `last_reply`, live adds after.
    first.replies = (first.replies || 0) + 1;
    first.last_reply = f.seq;
    if (f.room === state.current) state.list.refresh(f.thread);
  }
  threadSaw(f.room, m);
  if (mine) {
    // Our own message, maybe before its ack: it is no longer pending.
    const i = v.pending.findIndex((p) => p.body === f.body && !p.seq);
    if (i >= 0) v.pending[i].seq = f.seq;
    v.pending = v.pending.filter((p) => p.seq !== f.seq);
  }
  const hadTyping = v.typing.delete(f.from);
  const current = f.room === state.current;
  if (f.seq > v.hi) {
    const gap = f.seq > v.hi + 1;
    v.hi = f.seq;
    if (gap) fillGaps(v).catch(() => null);
  }
  if (current) {
    // Cheap per message: the list draws once per frame, and keeps the
    // bottom in view if it was there.
    state.list.resize(count(v));
    redrawSeq(f.seq);
    if (hadTyping) renderTyping(v);
    markRead();
  }
}

// A desktop notification for a message that mentions us or comes in a
// direct message, when we are not looking at its room (the tab hidden, or
// another room open). Only with the permission asked for in the sidebar.
function notify(f) {
  if (!("Notification" in window) || Notification.permission !== "granted" || !f.body) return;
  const r = state.rooms.get(f.room);
  if (!r || (!r.dm && !mentions(f.body, state.auth.name))) return;
  if (document.visibilityState === "visible" && f.room === state.current) return;
  const who = nameOf(view(f.room), f.from);
  const n = new Notification(r.dm ? who : `${who} in ${title(r)}`, { body: firstLine(f.body), tag: `rookery-${f.room}` });
  n.onclick = () => {
    window.focus();
    openRoom(f.room);
    n.close();
  };
}

// The sidebar's offer to turn notifications on (asked on a click, as
// browsers require), shown until answered.
function offerNotifications() {
  const b = $("#notify-on");
  b.hidden = !("Notification" in window) || Notification.permission !== "default";
  b.onclick = async () => {
    await Notification.requestPermission();
    b.hidden = true;
  };
}

function renderOnline(v) {
  if (state.session?.state !== "online") {
    $("#online").textContent = "presence unknown while disconnected";
    return;
  }
  const names = [...v.online].map((u) => nameOf(v, u)).sort();
  $("#online").textContent = names.length ? `online: ${names.join(", ")}` : "";
  const dm = state.rooms.get(v.room)?.dm;
  if (dm && !v.online.has(dm.user)) showLastSeen(v.room, dm);
}

// In a direct message with someone offline: when they were last seen
// (their profile's last_seen_ms).
async function showLastSeen(room, dm) {
  try {
    const cached = lastSeen.get(dm.user);
    const fresh = cached && Date.now() - cached.at < 30000;
    const p = fresh ? cached.p : await call("GET", `/api/users/${dm.user}`);
    if (!fresh) lastSeen.set(dm.user, { at: Date.now(), p });
    const v = view(room);
    if (state.current !== room || v.online.has(dm.user) || !p.last_seen_ms) return;
    if (state.session?.state !== "online") return; // presence is unknown now
    $("#online").textContent = `${dm.name} was last seen ${ago(p.last_seen_ms)}`;
  } catch (_) {
    // Only a hint: nothing shown.
  }
}

// Profiles read for "last seen", each kept 30 s (a DM's header is drawn
// again on every presence change).
const lastSeen = new Map();

function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `on ${new Date(ms).toLocaleDateString()}`;
}

function renderTyping(v) {
  const now = Date.now();
  for (const [u, until] of v.typing) if (until <= now) v.typing.delete(u);
  const names = [...v.typing.keys()].map((u) => nameOf(v, u));
  $("#typing").textContent = names.length
    ? `${names.join(", ")} ${names.length === 1 ? "is" : "are"} typing…`
    : "";
}

// ---- composing ---------------------------------------------------------------

function send(form) {
  const body = form.body.value;
  const attached = state.editing === null ? state.attachments : [];
  if ((!body.trim() && !attached.length) || state.current === null) return;
  if (attached.some((a) => !a.id)) {
    notice(attached.some((a) => a.error) ? "remove the files that failed first" : "wait for the files to upload");
    return;
  }
  const files = attached.map((a) => a.id);
  const tooBig = oversize(body, files);
  if (tooBig) {
    // Refused here, with the text kept: the server would close the socket.
    composerError(tooBig);
    return;
  }
  composerError("");
  state.attachments = [];
  renderAttachments();
  const room = state.current;
  form.body.value = "";
  autosize(form.body);
  if (state.editing !== null) {
    const seq = state.editing;
    stopEdit();
    state.session
      .request({ type: "edit", room, seq, body })
      .catch((e) => notice("edit: " + e.message));
    return;
  }
  const replyTo = state.replyTo;
  stopReply();
  const sent = state.session.send(room, body, replyTo, files);
  track(room, sent, body, replyTo, body || attached.map((a) => a.name).join(", "));
  state.list.scrollToBottom();
}

// Why `body` (with `files`) cannot be sent, or "" when it can: the
// server's limits on a body and on a WebSocket message.
function oversize(body, files) {
  const { message_body_bytes_max: bodyMax, ws_frame_bytes_max: frameMax } = state.limits;
  const bytes = new TextEncoder().encode(body).length;
  const frame = { type: "send", room: state.current, body, client_id: "0".repeat(32), reply_to: state.replyTo || 0, files };
  if (bytes <= bodyMax && state.session.fits(frame)) return "";
  const limit = Math.min(bodyMax, frameMax);
  return `This message is ${size(bytes)}; the server takes at most ${size(limit)} (about ${Math.floor(limit / 1024)} KiB of text). Shorten it, split it, or attach it as a file.`;
}

// An error about what is in the composer, shown beside it (and read out).
function composerError(text) {
  const e = $("#composer-error");
  e.textContent = text;
  e.hidden = !text;
}

// Shows a send as pending in its room until it is acknowledged; refused,
// it stays with the reason and can be taken back to the composer or
// discarded (it is never sent again by itself).
function track(room, sent, body, replyTo, shown = body) {
  const v = view(room);
  v.pending.push({ client_id: sent.client_id, body: shown, seq: 0 });
  if (room === state.current) state.list.resize(count(v));
  sent.acked.then(
    (ack) => {
      v.pending = v.pending.filter((p) => p.client_id !== sent.client_id);
      // Posting counts as reading (the server's marker is past it).
      const r = state.rooms.get(room);
      if (r) r.read = Math.max(r.read || 0, ack.seq);
      if (v.loaded && !v.msgs.has(ack.seq)) {
        // The live event (with the quote) replaces this when it comes.
        v.msgs.set(ack.seq, { seq: ack.seq, from: state.auth.user, ts: ack.ts, body, edited: false, reply_to: replyTo });
        if (ack.seq > v.hi + 1) fillGaps(v).catch(() => null);
        if (ack.seq > v.hi) v.hi = ack.seq;
      }
      if (room === state.current) {
        state.list.resize(count(v));
        redrawSeq(ack.seq);
      }
    },
    (e) => {
      const p = v.pending.find((p) => p.client_id === sent.client_id);
      if (p && e.code !== "discarded") p.failed = e.message;
      else v.pending = v.pending.filter((p) => p.client_id !== sent.client_id);
      if (room === state.current) {
        state.list.resize(count(v));
        state.list.refresh("p:" + sent.client_id);
      }
    },
  );
}

// A refused send taken off its room; `edit` puts its text back in the
// composer to change and send again.
function dropPending(v, p, edit) {
  v.pending = v.pending.filter((x) => x !== p);
  state.session.discard(p.client_id);
  if (v.room === state.current) state.list.resize(count(v));
  if (edit) {
    const box = $("#composer").body;
    box.value = p.body;
    autosize(box);
    box.focus();
    composerError(oversize(p.body, []));
  }
}

function startEdit(seq) {
  const v = view(state.current);
  const m = v.msgs.get(seq);
  if (!m || m.body === null) return;
  state.editing = seq;
  const box = $("#composer").body;
  box.value = m.body;
  $("#composer").classList.add("editing");
  $("#composer-mode").textContent = "editing — Enter saves, Esc cancels";
  box.focus();
  autosize(box);
}

function stopEdit() {
  state.editing = null;
  $("#composer").classList.remove("editing");
  $("#composer-mode").textContent = "";
}

function startReply(seq) {
  const v = view(state.current);
  const m = v.msgs.get(seq);
  if (!m || m.body === null) return;
  stopEdit();
  state.replyTo = seq;
  $("#composer").classList.add("replying");
  $("#composer-mode").textContent = `replying to ${nameOf(v, m.from)}: ${firstLine(m.body)} — Esc cancels`;
  $("#composer").body.focus();
}

function stopReply() {
  if (state.replyTo === null) return;
  state.replyTo = null;
  $("#composer").classList.remove("replying");
  $("#composer-mode").textContent = "";
}

// ---- threads -----------------------------------------------------------------

// Opens the side panel on the thread `seq` is in: its first message, then
// its replies (a few pages at most), kept current by live events.
async function openThread(room, seq) {
  closeMembers();
  const panel = $("#thread");
  // `want`: the seq asked for, until the first page says which thread.
  const t = { room, want: seq, first: null, msgs: new Map() };
  state.thread = t;
  panel.hidden = false;
  $("#thread-list").replaceChildren(el("p", { class: "hint", text: "loading…" }));
  try {
    let after = 0;
    for (let page = 0; page < 10; page++) {
      const p = await call("GET", `/api/rooms/${room}/messages/${seq}/thread?limit=${state.pageLen}&after=${after}`);
      if (state.thread !== t) return;
      t.first = p.first;
      for (const m of p.messages) t.msgs.set(m.seq, m);
      if (!p.next) break;
      after = p.next.after;
    }
  } catch (e) {
    if (state.thread === t) closeThread();
    notice("thread: " + e.message);
    return;
  }
  renderThread();
  $("#thread-reply").body.focus();
}

function closeThread() {
  state.thread = null;
  $("#thread").hidden = true;
}

function renderThread() {
  const t = state.thread;
  if (!t || !t.first) return;
  const v = view(t.room);
  const row = (m) =>
    el(
      "div",
      { class: "msg" + (m.from === state.auth.user ? " mine" : ""), "data-seq": m.seq },
      el(
        "div",
        { class: "meta" },
        el("b", { text: nameOf(v, m.from) }),
        " ",
        el("time", { text: clock(m.ts), title: fullDate(m.ts), dateTime: new Date(m.ts).toISOString() }),
      ),
      m.reply_to && m.reply_to !== t.first.seq ? quoteOf(v, m) : "",
      bodyOf(m),
    );
  const replies = [...t.msgs.values()].sort((a, b) => a.seq - b.seq);
  // The thread's own count (the panel loads at most a few pages), and
  // any reply seen since.
  const n = Math.max(replies.length, t.first.replies || 0);
  $("#thread-list").replaceChildren(
    row(t.first),
    el("p", { class: "hint", text: `${n} ${n === 1 ? "reply" : "replies"}` }),
    ...replies.map(row),
  );
}

// A live message: the open thread takes it if it is one of its replies.
function threadSaw(room, m) {
  const t = state.thread;
  if (!t || t.room !== room || !m.thread || t.msgs.has(m.seq)) return;
  const root = t.first ? t.first.seq : t.want;
  if (m.thread !== root) return;
  t.msgs.set(m.seq, m);
  if (t.first && (t.first.last_reply || 0) < m.seq) {
    t.first.replies = (t.first.replies || 0) + 1;
    t.first.last_reply = m.seq;
  }
  renderThread();
}

function threadChanged(f) {
  const t = state.thread;
  if (!t || !t.first || t.room !== f.room) return;
  const edit = f.type === "edit";
  const apply = (m) => Object.assign(m, edit ? { body: f.body, edited: true } : { body: null, deleted: true });
  if (t.first.seq === f.seq) apply(t.first);
  if (t.msgs.has(f.seq)) apply(t.msgs.get(f.seq));
  for (const m of t.msgs.values()) {
    if (m.reply_to === f.seq && m.quote) m.quote = { ...m.quote, text: edit ? firstLine(f.body) : null };
  }
  renderThread();
}

// A reply from the thread's panel answers the thread's first message, or
// its newest live reply once the first is deleted.
function replyInThread(form) {
  const t = state.thread;
  const body = form.body.value;
  if (!t || !t.first || !body.trim()) return;
  const live = [t.first, ...t.msgs.values()].filter((m) => m.body !== null);
  if (!live.length) return notice("every message of this thread was deleted");
  const to = t.first.body !== null ? t.first.seq : Math.max(...live.map((m) => m.seq));
  const tooBig = oversize(body, []);
  if (tooBig) {
    notice(tooBig, true); // the text stays in the box
    return;
  }
  form.body.value = "";
  state.session.send(t.room, body, to).acked.catch((e) => {
    // Refused: the text comes back to the box (unless something new is there).
    if (!form.body.value) form.body.value = body;
    notice("not sent: " + e.message);
  });
}

function remove(seq) {
  if (!confirm("Delete this message?")) return;
  state.session
    .request({ type: "delete", room: state.current, seq })
    .catch((e) => notice("delete: " + e.message));
}

function lastOwn(v) {
  for (let s = v.hi; s >= v.lo; s--) {
    const m = v.msgs.get(s);
    if (m && m.from === state.auth.user && m.body !== null) return s;
  }
  return 0;
}

function typed() {
  const now = Date.now();
  if (state.current === null || now - state.lastTypingSent < TYPING_SEND_EVERY_MS) return;
  state.lastTypingSent = now;
  state.session.request({ type: "typing", room: state.current }).catch(() => null);
}

function autosize(box) {
  box.style.height = "auto";
  box.style.height = Math.min(box.scrollHeight, 160) + "px";
}

// Read up to the newest message shown (at most one receipt per
// READ_EVERY_MS: a busy room must not cost a receipt per message). Only
// what was on screen counts: a backlog is read as it is scrolled through,
// never all at once because the room was opened.
function markRead() {
  updateJumps();
  if (state.readTimer) return;
  state.readTimer = setTimeout(() => {
    state.readTimer = null;
    const v = state.views.get(state.current);
    if (!v || !v.loaded || document.visibilityState !== "visible") return;
    if (!state.rooms.get(v.room)?.member) return; // a preview marks nothing
    // On a phone a thread or the members cover the room: nothing is seen.
    const covered = !$("#thread").hidden || !$("#members").hidden;
    if (covered && window.matchMedia("(max-width: 640px)").matches) return;
    const seen = onScreen(v).last;
    if (seen <= v.readSent) return;
    v.readSent = seen;
    state.session
      .request({ type: "read", room: v.room, seq: seen })
      .then((receipt) => {
        const r = state.rooms.get(v.room);
        if (r) r.read = Math.max(r.read || 0, receipt.seq || seen);
      })
      .catch(() => (v.readSent = 0));
  }, READ_EVERY_MS);
}

// What of the open room is on screen: `first`, the oldest row with any of
// it in view (Infinity: none; a placeholder counts), and `last`, the newest
// loaded message whose end is in view (0: none). One pass over the rows.
function onScreen(v) {
  const box = $("#messages").getBoundingClientRect();
  let first = Infinity;
  let last = 0;
  for (const row of document.querySelectorAll("#messages .msg[data-seq]")) {
    const r = row.getBoundingClientRect();
    const seq = Number(row.dataset.seq);
    if (r.bottom > box.top + 1 && r.top < box.bottom) first = Math.min(first, seq);
    const ended = r.bottom <= box.bottom + 1 && r.bottom > box.top;
    if (ended && !row.classList.contains("placeholder")) last = Math.max(last, seq);
  }
  return { first, last: Math.min(last, v.hi) };
}

// The two ways back: "N new messages" (or "Jump to latest") while
// scrolled up, and "Jump to first unread" while the first unread message
// is above the screen.
function updateJumps() {
  const v = state.views.get(state.current);
  const latest = $("#jump-latest");
  const unread = $("#jump-unread");
  if (!v || !v.loaded) {
    latest.hidden = unread.hidden = true;
    return;
  }
  const { first: top, last: seen } = onScreen(v);
  const below = state.list.atBottom() ? 0 : Math.max(0, v.hi - seen);
  const fresh = Math.max(0, v.hi - Math.max(seen, v.readSent));
  latest.hidden = below === 0;
  latest.textContent = fresh > 0 ? `↓ ${fresh} new message${fresh === 1 ? "" : "s"}` : "↓ Jump to latest";
  const first = v.firstUnread;
  unread.hidden = !(first >= v.lo && first <= v.hi && first < top);
}

// End, or the pill: the newest message, focused.
function jumpToLatest() {
  const v = state.views.get(state.current);
  if (!v) return;
  state.list.scrollToBottom();
  // Rows measured on the way may grow the list: the list keeps to the
  // bottom while it sticks; the focus goes once it is drawn.
  requestAnimationFrame(() => requestAnimationFrame(() => focusSeq(v.hi)));
}

function jumpToFirstUnread() {
  const v = state.views.get(state.current);
  if (v?.firstUnread) focusSeq(v.firstUnread);
}

// ---- files -------------------------------------------------------------------

// Files chosen, pasted or dropped, uploading or uploaded, for the next
// message.
function addFiles(list) {
  for (const file of list) {
    if (state.attachments.length >= FILES_PER_MESSAGE_MAX) {
      notice(`at most ${FILES_PER_MESSAGE_MAX} files a message`);
      break;
    }
    const a = { name: file.name || "pasted", progress: 0, id: null, error: null };
    state.attachments.push(a);
    upload(state.auth.token, file, (p) => {
      a.progress = p;
      renderAttachments();
    }).then(
      (up) => {
        a.id = up.id;
        if (a.removed) forgetUpload(a);
        renderAttachments();
      },
      (e) => {
        a.error = e.message;
        renderAttachments();
      },
    );
  }
  renderAttachments();
}

// A file taken off the next message is never sent: the server removes
// it now rather than keep it a day (best effort; the sweep is the net).
function forgetUpload(a) {
  api("DELETE", `/api/uploads/${a.id}`, { token: state.auth.token }).catch(() => {});
}

function renderAttachments() {
  const box = $("#attachments");
  box.replaceChildren(
    ...state.attachments.map((a, i) =>
      el(
        "span",
        { class: "attachment" + (a.error ? " failed" : a.id ? " done" : ""), "data-name": a.name },
        a.error ? `${a.name}: ${a.error} ` : a.id ? `${a.name} ✓ ` : `${a.name} ${Math.round(a.progress * 100)}% `,
        el("button", {
          type: "button",
          class: "link",
          text: "×",
          ariaLabel: "Remove " + a.name,
          onclick: () => {
            state.attachments.splice(i, 1);
            a.removed = true;
            if (a.id) forgetUpload(a);
            renderAttachments();
          },
        }),
      ),
    ),
  );
}

// Blob URLs of the uploads shown (each read once, with the token), the
// most recently used last; past BLOBS_MAX the oldest is revoked (an image
// already drawn keeps its pixels; one drawn again is read again).
const BLOBS_MAX = 200;
const blobs = new Map();
function blobOf(url) {
  let got = blobs.get(url);
  if (got) {
    blobs.delete(url);
  } else {
    got = blobUrl(state.auth.token, url).catch(() => (blobs.delete(url), null));
  }
  blobs.set(url, got);
  while (blobs.size > BLOBS_MAX) {
    const [oldest, pending] = blobs.entries().next().value;
    blobs.delete(oldest);
    pending.then((u) => u && URL.revokeObjectURL(u));
  }
  return got;
}

function filesOf(m) {
  if (!m.files?.length || m.deleted || m.body === null) return null;
  return el(
    "div",
    { class: "files" },
    ...m.files.map((f) => {
      if (f.thumbnail) {
        const img = el("img", { class: "thumb", alt: f.name, title: f.name, width: f.width, height: f.height });
        blobOf(f.thumbnail).then((u) => u && (img.src = u));
        img.onclick = () => blobOf(f.url).then((u) => u && window.open(u, "_blank", "noopener"));
        return img;
      }
      return el("button", {
        type: "button",
        class: "file link",
        text: `${f.name || "file"} (${size(f.bytes)})`,
        onclick: () =>
          blobOf(f.url).then((u) => {
            if (!u) return;
            const a = el("a", { href: u, download: f.name || "file" });
            a.click();
          }),
      });
    }),
  );
}

function size(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1 << 20) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / (1 << 20)).toFixed(1)} MiB`;
}

// ---- message search ----------------------------------------------------------

// Searches every room you are in, or the open one ("in this room"); a
// page at a time, `offset` 0 for a new search. A result opens its room at
// the message.
async function searchMessages(form, offset) {
  const q = form.q.value.trim();
  if (!q) return;
  const here = form.here.checked && state.current !== null;
  const turn = (state.searchTurn = (state.searchTurn || 0) + 1);
  const params = new URLSearchParams({ q, limit: "20", offset: String(offset) });
  if (here) params.set("room", String(state.current));
  $("#search-results").hidden = false;
  if (offset === 0) $("#search-list").replaceChildren();
  $("#search-summary").textContent = "Searching…";
  let page;
  try {
    page = await call("GET", "/api/search?" + params);
  } catch (e) {
    if (turn === state.searchTurn) $("#search-summary").textContent = e.message;
    return;
  }
  if (turn !== state.searchTurn) return; // a newer search is under way
  state.search = { next: page.next?.offset ?? null };
  for (const r of page.results) $("#search-list").append(searchRow(r));
  const n = $("#search-list").children.length;
  $("#search-summary").textContent = n ? `${n}${page.next ? "+" : ""} found` : `Nothing found for “${q}”`;
  $("#search-more").hidden = !page.next;
}

function searchRow(r) {
  const room = state.rooms.get(r.room);
  const v = state.views.get(r.room);
  const who = v ? nameOf(v, r.message.from) : "";
  const when = dayOf(r.message.ts) === dayOf(Date.now()) ? clock(r.message.ts) : new Date(r.message.ts).toLocaleDateString();
  const where = `${room ? title(room) : "room " + r.room}${who ? " · " + who : ""} · ${when}`;
  return el(
    "li",
    {},
    el(
      "button",
      { type: "button", class: "found", onclick: () => jumpTo(r.room, r.message.seq) },
      el("span", { class: "where", text: where }),
      el("span", { class: "text", text: r.message.body || "" }),
    ),
  );
}

function closeSearch() {
  state.searchTurn = (state.searchTurn || 0) + 1;
  $("#search-results").hidden = true;
  $("#search-list").replaceChildren();
  $("#search").q.value = "";
}

// Reads the messages around `seq` (a few before it, a page from it), so
// the rows there are at once; the gap to the loaded ones fills behind.
async function loadAround(v, seq) {
  const room = v.room;
  const [upTo, after] = await Promise.all([
    call("GET", `/api/rooms/${room}/messages?before=${seq + 1}&limit=20`),
    call("GET", `/api/rooms/${room}/messages?after=${seq}&limit=${state.pageLen}`),
  ]);
  const added = absorb(v, [...upTo.messages, ...after.messages]);
  // Filled whichever room is open by then (the rows it left as
  // placeholders must not stay so).
  fillGaps(v).catch(() => null);
  if (state.current !== room) return;
  state.list.prepend(added);
  state.list.resize(count(v));
}

// Opens `room` at message `seq`: its page read if it is not loaded (the
// messages between it and the loaded ones come as placeholders, fetched
// behind it), scrolled to and marked for a moment.
async function jumpTo(room, seq) {
  await openRoom(room);
  if (state.current !== room) return;
  const v = view(room);
  if (!v.msgs.has(seq)) {
    try {
      await loadAround(v, seq);
    } catch (e) {
      notice(e.message);
      return;
    }
  }
  if (seq < v.lo || seq > v.hi) return notice("That message is no longer there.");
  state.list.scrollToIndex(seq - v.lo);
  requestAnimationFrame(() => {
    const row = $(`#messages [data-seq="${seq}"]`);
    if (!row) return;
    row.classList.add("found");
    row.focus({ preventScroll: true });
    setTimeout(() => row.classList.remove("found"), 2500);
  });
}

// ---- keyboard ----------------------------------------------------------------

// The message list is one Tab stop: ↑/↓ move between messages, Home and
// End go to the oldest loaded and the latest, and the focused message's
// actions join the Tab order (so Tab reaches the composer in one or two
// steps, not through every message's buttons).
function wireMessageKeys(list) {
  list.addEventListener("focusin", (e) => {
    const row = e.target.closest?.(".msg[data-seq]");
    if (row) for (const b of row.querySelectorAll("button")) b.tabIndex = 0;
  });
  list.addEventListener("focusout", (e) => {
    const row = e.target.closest?.(".msg[data-seq]");
    if (row && !row.contains(e.relatedTarget)) for (const b of row.querySelectorAll("button")) b.tabIndex = -1;
  });
  list.addEventListener("keydown", (e) => {
    const v = state.views.get(state.current);
    if (!v || e.altKey || e.ctrlKey || e.metaKey) return;
    const at = Number(document.activeElement?.closest?.(".msg[data-seq]")?.dataset.seq) || 0;
    let to = 0;
    if (e.key === "ArrowUp") to = at ? at - 1 : onScreen(v).last;
    else if (e.key === "ArrowDown") to = at ? at + 1 : onScreen(v).last;
    else if (e.key === "Home") to = v.lo;
    else if (e.key === "End") {
      e.preventDefault();
      jumpToLatest();
      return;
    } else return;
    if (to < v.lo || to > v.hi) return;
    e.preventDefault();
    focusSeq(to);
  });
}

// Moves the focus to message `seq` of the open room, scrolling it into
// view (rendered on the next frame if it was not).
function focusSeq(seq) {
  const v = state.views.get(state.current);
  const found = () => $(`#messages .msg[data-seq="${seq}"]`);
  const row = found();
  const box = $("#messages").getBoundingClientRect();
  const r = row?.getBoundingClientRect();
  if (!row || r.top < box.top || r.bottom > box.bottom) state.list.scrollToIndex(seq - v.lo, 40);
  requestAnimationFrame(() => found()?.focus({ preventScroll: true }));
}

// Ctrl+K (⌘K): a dialog to find a room or direct message by name and open
// it with Enter.
function wireSwitcher() {
  const dialog = $("#switcher");
  const input = $("#switcher-q");
  const list = $("#switcher-list");
  const matches = () => {
    const q = input.value.trim().toLowerCase();
    return [...state.rooms.values()]
      .filter((r) => title(r).toLowerCase().includes(q))
      .sort((a, b) => b.unread - a.unread || title(a).localeCompare(title(b)))
      .slice(0, 12);
  };
  const draw = () => {
    list.replaceChildren(
      ...matches().map((r, i) =>
        el(
          "li",
          { class: i === 0 ? "first" : "" },
          el("button", {
            type: "button",
            class: "room-link",
            text: title(r) + (r.unread ? ` (${r.unread} unread)` : ""),
            onclick: () => pick(r.id),
          }),
        ),
      ),
    );
  };
  const pick = (id) => {
    dialog.close();
    openRoom(id);
  };
  input.addEventListener("input", draw);
  input.addEventListener("keydown", (e) => {
    if (e.key !== "Enter") return;
    e.preventDefault();
    const first = matches()[0];
    if (first) pick(first.id);
  });
  document.addEventListener("keydown", (e) => {
    if (!(e.ctrlKey || e.metaKey) || e.key.toLowerCase() !== "k" || $("#app").hidden) return;
    e.preventDefault();
    input.value = "";
    draw();
    dialog.showModal();
    input.focus();
  });
}

// ---- wiring ----------------------------------------------------------------

function wire() {
  const auth = $("#auth-form");
  auth.addEventListener("submit", (e) => {
    e.preventDefault();
    signIn(auth);
  });
  $("#auth-switch").onclick = () => {
    authMode(auth, auth.dataset.mode === "login" ? "register" : "login");
    auth.name.focus();
  };
  // A stale error goes once the field it was about changes.
  auth.addEventListener("input", () => (auth.querySelector(".error").textContent = ""));
  $("#logout").onclick = signOut;
  $("#new-room").addEventListener("submit", (e) => {
    e.preventDefault();
    createRoom(e.target);
  });
  $("#new-dm").addEventListener("submit", (e) => {
    e.preventDefault();
    openDm(e.target);
  });
  $("#new-dm").name.addEventListener("input", (e) => suggestLater(e.target));
  $("#search").addEventListener("submit", (e) => {
    e.preventDefault();
    searchMessages(e.target, 0);
  });
  $("#search-more").onclick = () => searchMessages($("#search"), state.search?.next ?? 0);
  $("#search-close").onclick = closeSearch;
  $("#me").onclick = openProfile;
  $("#profile").addEventListener("submit", (e) => {
    e.preventDefault();
    saveProfile(e.target);
  });
  $("#profile-cancel").onclick = () => ($("#profile").hidden = true);
  $("#avatar-input").onchange = (e) => chooseAvatar(e.target.files[0]);
  $("#avatar-clear").onclick = () => {
    state.avatarTurn++;
    state.avatar = "";
    $("#avatar-input").value = "";
    previewAvatar(null);
  };
  $("#back").onclick = () => $("#app").classList.remove("show-room");
  $("#invite").addEventListener("submit", (e) => {
    e.preventDefault();
    invite(e.target);
  });
  $("#thread-close").onclick = closeThread;
  $("#join").onclick = joinShown;
  $("#members-open").onclick = () => ($("#members").hidden ? openMembers() : closeMembers());
  $("#members-close").onclick = closeMembers;
  $("#leave").onclick = leaveRoom;
  $("#jump-latest").onclick = jumpToLatest;
  // The skip link focuses the message box (not a jump to a fragment: the
  // hash holds the open room).
  $(".skip").onclick = (e) => {
    e.preventDefault();
    const box = $("#composer-body");
    if (!$("#composer").hidden && !$("#app").hidden) box.focus();
    else $("#messages").focus();
  };
  $("#jump-unread").onclick = jumpToFirstUnread;
  const inThread = $("#thread-reply");
  inThread.addEventListener("submit", (e) => {
    e.preventDefault();
    replyInThread(inThread);
  });
  inThread.body.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      replyInThread(inThread);
    } else if (e.key === "Escape") {
      closeThread();
    }
  });
  const composer = $("#composer");
  // Files: the button, a paste, a drop on the room.
  const picker = $("#attach-input");
  $("#attach").addEventListener("click", () => picker.click());
  picker.addEventListener("change", () => {
    addFiles([...picker.files]);
    picker.value = "";
  });
  composer.body.addEventListener("paste", (e) => {
    const files = [...(e.clipboardData?.files || [])];
    if (files.length) {
      e.preventDefault();
      addFiles(files);
    }
  });
  const room = $("#messages");
  const dragging = (e) => [...(e.dataTransfer?.types || [])].includes("Files");
  room.addEventListener("dragover", (e) => {
    if (!dragging(e) || composer.hidden) return;
    e.preventDefault();
    room.classList.add("dropping");
  });
  room.addEventListener("dragleave", () => room.classList.remove("dropping"));
  room.addEventListener("drop", (e) => {
    room.classList.remove("dropping");
    if (!dragging(e) || composer.hidden) return;
    e.preventDefault();
    addFiles([...e.dataTransfer.files]);
  });
  composer.addEventListener("submit", (e) => {
    e.preventDefault();
    send(composer);
  });
  composer.body.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send(composer);
    } else if (e.key === "Escape" && state.editing !== null) {
      stopEdit();
      composer.body.value = "";
    } else if (e.key === "Escape" && state.replyTo !== null) {
      stopReply();
    } else if (e.key === "ArrowUp" && composer.body.value === "" && state.current !== null) {
      const seq = lastOwn(view(state.current));
      if (seq) {
        e.preventDefault();
        startEdit(seq);
      }
    }
  });
  composer.body.addEventListener("input", () => {
    autosize(composer.body);
    // Only a change of verdict is said again (the box is an alert).
    if (!$("#composer-error").hidden && !oversize(composer.body.value, [])) composerError("");
    // Editing is not typing a new message: the others are not told.
    if (composer.body.value && state.editing === null) typed();
  });
  wireMessageKeys($("#messages"));
  wireSwitcher();
  // Alt+Up / Alt+Down: the previous or next of your rooms.
  document.addEventListener("keydown", (e) => {
    if (!e.altKey || (e.key !== "ArrowUp" && e.key !== "ArrowDown")) return;
    const mine = [...document.querySelectorAll("#dms .room-link, #my-rooms .room-link")].map((b) =>
      Number(b.dataset.room),
    );
    const at = mine.indexOf(state.current);
    const next = mine[(at + (e.key === "ArrowUp" ? -1 : 1) + mine.length) % mine.length];
    if (next !== undefined) {
      e.preventDefault();
      openRoom(next);
    }
  });
  document.addEventListener("visibilitychange", markRead);
  // Rooms created by others appear without a reload.
  setInterval(() => state.session?.state === "online" && loadRooms().catch(() => null), 15000);
  window.addEventListener("focus", () => state.session?.state === "online" && loadRooms().catch(() => null));
  setInterval(() => {
    const v = state.views.get(state.current);
    if (v) renderTyping(v);
  }, 1000);
}

wire();
const auth = saved();
if (auth && auth.token) start(auth);
else showAuth();

// For tests and the curious: the state, read-only by convention.
window.rookery = { state, ApiError, blobOf, blobs, BLOBS_MAX };
