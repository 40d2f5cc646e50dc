#!/usr/bin/env python3
"""End-to-end test of the `rookery` binary with a client that is neither
Rust nor written here: Python's `websockets` (with its own RFC 7692
permessage-deflate) and the standard library's HTTP client.

Starts the server on an ephemeral port with its own data directory, walks
the protocol a chat client uses, asserts every outcome, stops the server
with SIGTERM and checks the close code and the exit status. Then, when
`nats-server` is on PATH, the same walk against a cluster of three nodes
and three NATS servers, every HTTP request and WebSocket going to the next
node in turn. Exit status 0 means every check held.
Usage: python_client.py --bin target/debug/rookery
"""

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib

import websockets
from websockets.asyncio.client import connect

CHECKS = 0


def check(cond, what):
    global CHECKS
    if not cond:
        raise AssertionError(what)
    CHECKS += 1


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



def tiny_png(w, h):
    """A `w` x `h` PNG of one colour (RGB, 8 bits), written by hand."""
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
    rows = b"".join(b"\x00" + b"\x33\x66\xcc" * w for _ in range(h))
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))

class Nodes:
    """The servers' ports, handed out in turn (round-robin, no stickiness)."""

    def __init__(self, ports):
        self.ports = ports
        self.turn = 0

    def next(self):
        port = self.ports[self.turn % len(self.ports)]
        self.turn += 1
        return port


class Http:
    def __init__(self, nodes):
        self.nodes = nodes

    def raw(self, method, path, token, data, headers, port):
        """A request with a raw body to node `port`: status, headers, body bytes."""
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
        req.add_header("Authorization", f"Bearer {token}")
        for k, v in headers.items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def call(self, method, path, token=None, body=None, headers=None):
        data = None if body is None else json.dumps(body).encode()
        base = f"http://127.0.0.1:{self.nodes.next()}"
        req = urllib.request.Request(base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                return resp.status, dict(resp.headers), json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, dict(e.headers), json.loads(raw) if raw else None


async def recv_json(ws, want=None, timeout=10):
    """The next JSON frame (of type `want`, skipping others when given)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {want}")
        v = json.loads(await asyncio.wait_for(ws.recv(), left))
        if want is None or v.get("type") == want:
            return v


async def call_ws(ws, frame):
    """Sends a frame with a `ref` and returns the reply carrying it."""
    await ws.send(json.dumps(frame))
    while True:
        v = await recv_json(ws)
        if v.get("ref") == frame["ref"]:
            return v


async def scenario(ports, procs):
    nodes = Nodes(ports)
    http = Http(nodes)

    def ws_at():
        """The next node's WebSocket URL, and which node it is."""
        port = nodes.next()
        return f"ws://127.0.0.1:{port}/ws", ports.index(port)

    # Accounts: register two users, log one in again.
    s, _, alice = http.call("POST", "/api/register", body={"name": "alice", "password": "pw-a-secret"})
    check(s == 201, f"register alice: {s}")
    s, _, bob = http.call("POST", "/api/register", body={"name": "bob", "password": "pw-b-secret"})
    check(s == 201, f"register bob: {s}")
    s, _, login = http.call("POST", "/api/login", body={"name": "alice", "password": "pw-a-secret"})
    check(s == 200 and login["user"] == alice["user"], f"login: {s} {login}")
    s, _, bad = http.call("POST", "/api/login", body={"name": "alice", "password": "nope"})
    check(s == 401 and bad["error"]["code"] == "unauthorized", f"bad login: {s} {bad}")
    a_tok, b_tok = login["token"], bob["token"]

    # A room; bob becomes a member over HTTP.
    s, _, room = http.call("POST", "/api/rooms", a_tok, {"name": "general"})
    check(s == 201, f"create room: {s}")
    rid = room["id"]
    s, _, _ = http.call("POST", f"/api/rooms/{rid}/join", b_tok)
    check(s == 200, f"join over HTTP: {s}")

    # Bob: token on the upgrade. Alice: an auth frame. Both offer deflate
    # (websockets does by default) and the server accepts it.
    ws_url, _ = ws_at()
    b = await connect(f"{ws_url}?token={b_tok}", max_size=2**20)
    ext = b.response.headers.get("Sec-WebSocket-Extensions", "")
    check("permessage-deflate" in ext, f"deflate negotiated: {ext!r}")
    check((await recv_json(b))["type"] == "hello", "bob hello")
    joined = await call_ws(b, {"type": "join", "room": rid, "ref": "j"})
    check(joined["type"] == "joined" and joined["last_seq"] == 0, f"bob joined: {joined}")

    ws_url, _ = ws_at()
    a = await connect(ws_url)
    hello = await call_ws(a, {"type": "auth", "token": a_tok, "ref": "auth"})
    check(hello["type"] == "hello" and hello["user"] == alice["user"], f"alice hello: {hello}")
    joined = await call_ws(a, {"type": "join", "room": rid, "ref": "j"})
    check(joined["type"] == "joined", f"alice joined: {joined}")

    # Presence and typing reach bob.
    p = await recv_json(b, "presence")
    check(p["user"] == alice["user"] and p["state"] == "online", f"presence: {p}")
    ack = await call_ws(a, {"type": "typing", "room": rid, "ref": "t"})
    check(ack["type"] == "ack", f"typing ack: {ack}")
    t = await recv_json(b, "typing")
    check(t["user"] == alice["user"] and t["room"] == rid, f"typing: {t}")

    # Ten sends: acks with seqs 1..10, delivered to bob in order.
    for i in range(1, 11):
        ack = await call_ws(a, {"type": "send", "room": rid, "body": f"m{i}", "client_id": f"c{i}", "ref": i})
        check(ack["type"] == "ack" and ack["seq"] == i and not ack["duplicate"], f"ack {i}: {ack}")
    for i in range(1, 11):
        m = await recv_json(b, "msg")
        check((m["seq"], m["body"], m["from"]) == (i, f"m{i}", alice["user"]), f"msg {i}: {m}")

    # An idempotent resend answers the original seq and stores nothing.
    dup = await call_ws(a, {"type": "send", "room": rid, "body": "m3 again", "client_id": "c3", "ref": "dup"})
    check(dup["seq"] == 3 and dup["duplicate"], f"resend: {dup}")

    # Bob reads up to 10, drops, misses 11..15, resumes with since=10.
    r = await call_ws(b, {"type": "read", "room": rid, "seq": 10, "ref": "r"})
    check(r["type"] == "receipt" and r["seq"] == 10, f"receipt: {r}")
    await b.close()
    for i in range(11, 16):
        ack = await call_ws(a, {"type": "send", "room": rid, "body": f"m{i}", "client_id": f"c{i}", "ref": i})
        check(ack["seq"] == i, f"ack {i}: {ack}")
    ws_url, b_node = ws_at()
    b = await connect(f"{ws_url}?token={b_tok}", max_size=2**20)
    await recv_json(b, "hello")
    await b.send(json.dumps({"type": "join", "room": rid, "since": 10, "ref": "j2"}))
    got = []
    while len(got) < 5:
        v = await recv_json(b)
        if v["type"] == "msg":
            got.append(v["seq"])
    check(got == [11, 12, 13, 14, 15], f"resume since 10: {got}")
    # Live after catch-up, with a body large enough to be compressed both
    # ways (the server compresses events from 512 bytes).
    big = "the quick brown fox jumps over the lazy dog " * 50
    ack = await call_ws(a, {"type": "send", "room": rid, "body": big, "client_id": "c16", "ref": 16})
    check(ack["seq"] == 16, f"ack 16: {ack}")
    m = await recv_json(b, "msg")
    check(m["seq"] == 16 and m["body"] == big, "msg 16 (compressed) intact, no gap or duplicate")

    # History over HTTP, and 304 for a repeated ETag.
    s, h, page = http.call("GET", f"/api/rooms/{rid}/messages?limit=5", b_tok)
    seqs = [x["seq"] for x in page["messages"]]
    check(s == 200 and seqs == [16, 15, 14, 13, 12] and page["next"] == {"before": 12}, f"page (newest first): {s} {seqs}")
    etag = h.get("ETag") or h.get("etag")
    check(etag is not None and h.get("X-Cache", h.get("x-cache")) in ("HIT", "MISS"), f"headers: {h}")
    s, _, _ = http.call("GET", f"/api/rooms/{rid}/messages?limit=5", b_tok, headers={"If-None-Match": etag})
    check(s == 304, f"repeated ETag: {s}")

    # A reply (bob answers 16 over his WebSocket; alice answers him over
    # HTTP): both quote what they answer and join 16's thread.
    ack = await call_ws(b, {"type": "send", "room": rid, "body": "seen it", "reply_to": 16, "ref": "re"})
    check(ack["type"] == "ack" and ack["seq"] == 17, f"reply ack: {ack}")
    m = await recv_json(a, "msg")
    check((m["seq"], m["reply_to"], m["thread"], m["quote"]) == (17, 16, 16, {"from": alice["user"], "text": big.strip()[:200]}),
          f"live reply: {m}")
    s, _, r = http.call("POST", f"/api/rooms/{rid}/messages", a_tok, {"body": "good", "reply_to": 17})
    check(s == 201 and r["seq"] == 18, f"reply over HTTP: {s} {r}")
    m = await recv_json(b, "msg")
    check((m["seq"], m["reply_to"], m["thread"], m["quote"]) == (18, 17, 16, {"from": bob["user"], "text": "seen it"}),
          f"reply to a reply: {m}")
    e = await call_ws(b, {"type": "send", "room": rid, "body": "x", "reply_to": 99, "ref": "re99"})
    check(e["type"] == "error" and e["code"] == "not_found", f"reply to nothing: {e}")
    s, _, t = http.call("GET", f"/api/rooms/{rid}/messages/18/thread?limit=1", b_tok)
    check(s == 200 and t["first"]["seq"] == 16 and t["first"]["replies"] == 2
          and [x["seq"] for x in t["messages"]] == [17] and t["next"] == {"after": 17}, f"thread: {s} {t}")
    s, _, t = http.call("GET", f"/api/rooms/{rid}/messages/16/thread?after=17", b_tok)
    check(s == 200 and [x["seq"] for x in t["messages"]] == [18] and t["next"] is None, f"thread page 2: {s} {t}")
    s, _, _ = http.call("GET", f"/api/rooms/{rid}/messages/99/thread", b_tok)
    check(s == 404, f"thread of nothing: {s}")

    # Reactions: bob's 👍 over his WebSocket, alice's over HTTP; both see
    # the react events; a page says whose.
    ack = await call_ws(b, {"type": "react", "room": rid, "seq": 16, "emoji": "👍", "ref": "rx"})
    check(ack["type"] == "ack" and ack["seq"] == 16, f"react ack: {ack}")
    e = await recv_json(a, "react")
    check((e["seq"], e["by"], e["emoji"], e["on"], e["count"]) == (16, bob["user"], "👍\ufe0f", True, 1), f"react event: {e}")
    coded = urllib.parse.quote("👍")
    s, _, r = http.call("PUT", f"/api/rooms/{rid}/messages/16/reactions/{coded}", a_tok)
    check(s == 200 and r["changed"] and r["on"], f"react over HTTP: {s} {r}")
    e = await recv_json(b, "react")
    check((e["by"], e["on"], e["count"]) == (alice["user"], True, 2), f"alice's react event: {e}")
    s, _, page = http.call("GET", f"/api/rooms/{rid}/messages?after=15&limit=1", b_tok)
    check(s == 200 and page["messages"][0]["reactions"] == [{"emoji": "👍\ufe0f", "count": 2, "me": True}],
          f"a page counts reactions: {s} {page}")
    s, _, r = http.call("DELETE", f"/api/rooms/{rid}/messages/16/reactions/{coded}", a_tok)
    check(s == 200 and r["changed"] and not r["on"], f"unreact over HTTP: {s} {r}")
    e = await recv_json(b, "react")
    check((e["by"], e["on"], e["count"]) == (alice["user"], False, 1), f"alice's unreact event: {e}")
    e = await call_ws(b, {"type": "react", "room": rid, "seq": 16, "emoji": "not an emoji", "ref": "rbad"})
    check(e["type"] == "error" and e["code"] == "bad_request", f"a word is no reaction: {e}")

    # Unread counts: bob's reply (17) counts as reading up to it; 18 is new.
    s, _, unread = http.call("GET", "/api/me/unread", b_tok)
    counts = {x["room"]: x["unread"] for x in unread["rooms"]}
    check(s == 200 and counts.get(rid) == 1, f"unread: {s} {unread}")

    # Receipts others see: bob reads up to 18 over HTTP; alice is shown it
    # (after his earlier one, at most one a second); every member's marker
    # (alice's own posts count as read).
    s, _, r = http.call("POST", f"/api/rooms/{rid}/read", b_tok, {"seq": 18})
    check(s == 200 and r["seq"] == 18, f"read over HTTP: {s} {r}")
    while True:
        e = await recv_json(a, "receipt")
        check("ref" not in e and e["room"] == rid and e["user"] == bob["user"], f"receipt event: {e}")
        if e["seq"] == 18:
            break
    s, _, rc = http.call("GET", f"/api/rooms/{rid}/receipts", a_tok)
    markers = {x["user"]: x["seq"] for x in rc["receipts"]}
    check(s == 200 and markers == {alice["user"]: 18, bob["user"]: 18} and rc["next"] is None,
          f"receipts: {s} {rc}")

    # A file: uploaded (streamed), sent in a message, read back whole and
    # in part; in a cluster read through another node than the one that
    # took it (the room's owner keeps a copy, any node serves it).
    data = b"hello, file\n" * 200
    s, _, raw = http.raw("POST", "/api/uploads?name=hello.txt", b_tok, data,
                         {"Content-Type": "text/plain"}, ports[0])
    up = json.loads(raw)
    check(s == 201 and up["bytes"] == len(data) and up["content_type"].startswith("text/plain"),
          f"upload: {s} {up}")
    ack = await call_ws(b, {"type": "send", "room": rid, "body": "see file", "files": [up["id"]], "ref": "f1"})
    check(ack["type"] == "ack", f"send with a file: {ack}")
    m = await recv_json(a, "msg")
    while m["seq"] != ack["seq"]:
        m = await recv_json(a, "msg")
    check(m["files"][0]["id"] == up["id"] and m["files"][0]["name"] == "hello.txt", f"msg with its file: {m}")
    s, h, got = http.raw("GET", up["url"], a_tok, None, {}, ports[-1])
    check(s == 200 and got == data and h.get("X-Content-Type-Options", h.get("x-content-type-options")) == "nosniff",
          f"download: {s}")
    s, h, got = http.raw("GET", up["url"], a_tok, None, {"Range": "bytes=0-4"}, ports[-1])
    check(s == 206 and got == b"hello", f"a range of it: {s} {got!r}")
    # Held by a message it cannot be removed; one never sent can.
    s, _, err = http.raw("DELETE", up["url"], b_tok, None, {}, ports[-1])
    check(s == 409, f"removing a sent upload: {s} {err!r}")
    s, _, raw = http.raw("POST", "/api/uploads?name=oops.txt", b_tok, b"oops",
                         {"Content-Type": "text/plain"}, ports[0])
    oops = json.loads(raw)
    s, _, gone = http.raw("DELETE", oops["url"], b_tok, None, {}, ports[-1])
    check(s == 200 and json.loads(gone)["deleted"], f"removing an unsent upload: {s} {gone!r}")
    s, _, _ = http.raw("GET", oops["url"], b_tok, None, {}, ports[-1])
    check(s == 404, f"the removed upload is gone: {s}")
    # An avatar: an image of bob's, named by his profile for everyone.
    s, _, raw = http.raw("POST", "/api/uploads?name=face.png", b_tok, tiny_png(8, 8),
                         {"Content-Type": "image/png"}, ports[0])
    face = json.loads(raw)
    check(s == 201 and face.get("thumbnail"), f"an image for an avatar: {s} {face}")
    s, _, p = http.call("PUT", "/api/me/profile", b_tok, {"avatar": face["id"]})
    check(s == 200 and p["avatar_url"].startswith(f"/api/users/{bob['user']}/avatar?v="),
          f"avatar set: {s} {p}")
    url = p["avatar_url"]
    # In a cluster each node's copy of the profile follows within moments.
    deadline = time.monotonic() + 20
    for port in ports:
        while True:
            s, _, raw = http.raw("GET", f"/api/users/{bob['user']}", a_tok, None, {}, port)
            p = json.loads(raw)
            if (s == 200 and p["avatar_url"] == url) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        check(s == 200 and p["avatar_url"] == url, f"bob's avatar seen by alice: {s} {p}")
    s, h, got = http.raw("GET", p["avatar_url"], a_tok, None, {}, ports[-1])
    check(s == 200 and got.startswith(b"\x89PNG"), f"the avatar's image: {s}")
    if len(ports) == 1:
        # Last seen: bob's activity reaches his profile within seconds.
        deadline = time.monotonic() + 20
        while True:
            s, _, p = http.call("GET", f"/api/users/{bob['user']}", a_tok)
            if p.get("last_seen_ms", 0) > 0 or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        check(s == 200 and abs(p["last_seen_ms"] / 1000 - time.time()) < 120, f"bob last seen: {p}")

    # Message search: bob finds his reply by its words, in any case (in a
    # cluster, whichever node is asked: each searches the rooms it owns).
    deadline = time.monotonic() + 20
    while True:
        s, _, found = http.call("GET", "/api/search?q=SEEN%20it", b_tok)
        if (s == 200 and found["results"]) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    check(s == 200 and [(r["room"], r["message"]["body"]) for r in found["results"]] == [(rid, "seen it")],
          f"search: {s} {found}")

    # A direct message: alice opens it by name; bob, online, is told, joins
    # it over his WebSocket and gets her message; the pair keeps one room.
    s, _, dm = http.call("POST", "/api/dms", a_tok, {"name": "bob"})
    check(s == 201 and dm["user"] == bob["user"] and dm["room"]["private"], f"open a dm: {s} {dm}")
    dm_room = dm["room"]["id"]
    told = await recv_json(b, "dm")
    check((told["room"], told["user"], told["name"]) == (dm_room, alice["user"], "alice"), f"dm notice: {told}")
    # Bob is invited until he opens it too (a request he may decline).
    s, _, listed = http.call("GET", "/api/dms", b_tok)
    check(s == 200 and [(d["user"], d["member"], d["invited"]) for d in listed["dms"]] == [(alice["user"], False, True)],
          f"bob's dm request: {s} {listed}")
    s, _, again = http.call("POST", "/api/dms", b_tok, {"user": alice["user"]})
    check(s == 200 and again["room"]["id"] == dm_room and again["member"], f"bob opens it too: {s} {again}")
    joined = await call_ws(b, {"type": "join", "room": dm_room, "ref": "dm-j"})
    check(joined["type"] == "joined" and joined["last_seq"] == 0, f"bob joined the dm: {joined}")
    ack = await call_ws(a, {"type": "send", "room": dm_room, "body": "psst", "client_id": "dm1", "ref": "dm1"})
    check(ack["type"] == "ack" and ack["seq"] == 1, f"dm ack: {ack}")
    m = await recv_json(b, "msg")
    check((m["room"], m["seq"], m["body"]) == (dm_room, 1, "psst"), f"dm msg: {m}")
    s, _, listed = http.call("GET", "/api/dms", b_tok)
    check(s == 200 and [(d["user"], d["room"]["id"]) for d in listed["dms"]] == [(alice["user"], dm_room)],
          f"bob's dms: {s} {listed}")
    s, _, err = http.call("POST", f"/api/rooms/{dm_room}/members", a_tok, {"name": "bob"})
    check(s == 403 and err["error"]["code"] == "forbidden", f"nobody invites into a dm: {s} {err}")

    # Bad input over the wire: an error frame, and the connection lives on.
    await b.send("{not json")
    e = await recv_json(b, "error")
    check(e["code"] == "bad_json", f"bad json: {e}")
    e = await call_ws(b, {"type": "teleport", "ref": "x"})
    check(e["type"] == "error" and e["code"] == "unknown_type", f"unknown type: {e}")
    pong = await call_ws(b, {"type": "ping", "ref": "p"})
    check(pong["type"] == "pong", f"still serving: {pong}")

    # Graceful shutdown (of bob's node): every WebSocket gets 1001, the
    # process exits 0.
    proc = procs[b_node]
    proc.send_signal(signal.SIGTERM)
    try:
        while True:
            await asyncio.wait_for(b.recv(), 10)
    except websockets.ConnectionClosed as closed:
        check(closed.rcvd is not None and closed.rcvd.code == 1001, f"close: {closed.rcvd}")
    await a.close()
    code = await asyncio.get_running_loop().run_in_executor(None, lambda: proc.wait(15))
    check(code == 0, f"exit status {code}")


async def echo_scenario(port, limit):
    """Issue 13 item 8: permessage-deflate as another implementation does
    it (websockets compresses with zlib; the server with miniz_oxide).
    Messages of every size around the limits, incompressible and text,
    whole or fragmented, come back whole; one byte over is 1009."""
    url = f"ws://127.0.0.1:{port}/echo"
    sizes = [0, 1, 125, 126, 65_535, 65_536, 60_000, 61_548, 64_000, 65_400,
             1 << 20, limit - 1, limit]

    def sample(n, text, seed):
        rnd = __import__("random").Random(seed)
        if text:
            return "".join(rnd.choices("abcdefghijklmnopqrstuvwxyz ", k=n))
        return rnd.randbytes(n)

    async with connect(url, max_size=None, compression="deflate") as ws:
        ext = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        check("permessage-deflate" in ext, f"echo: deflate negotiated: {ext!r}")
        for n in sizes:
            for text in (False, True):
                msg = sample(n, text, n)
                await ws.send(msg)
                back = await asyncio.wait_for(ws.recv(), 30)
                check(back == msg, f"echo {n} text={text}: {len(back)} bytes back")
                # The same in fragments of 16 KiB (or 3 for small ones).
                step = 16384 if n > 16384 else 3
                await ws.send([msg[i:i + step] for i in range(0, max(n, 1), step)])
                back = await asyncio.wait_for(ws.recv(), 30)
                check(back == msg, f"echo {n} text={text} fragmented: {len(back)} bytes back")
    async with connect(url, max_size=None, compression="deflate") as ws:
        await ws.send(sample(limit + 1, False, 1))
        try:
            await asyncio.wait_for(ws.recv(), 30)
            check(False, "a message over the limit was echoed")
        except websockets.ConnectionClosed as closed:
            check(closed.rcvd is not None and closed.rcvd.code == 1009, f"over the limit: {closed.rcvd}")


def start_nats(store):
    """Three nats-servers with JetStream in one NATS cluster; their
    processes and client URLs."""
    ports = [(free_port(), free_port()) for _ in range(3)]
    routes = ",".join(f"nats://127.0.0.1:{c}" for _, c in ports)
    procs = []
    for i, (p, c) in enumerate(ports):
        procs.append(subprocess.Popen(
            ["nats-server", "-a", "127.0.0.1", "-n", f"n{i}", "-p", str(p), "-js",
             "-sd", os.path.join(store, f"nats-{i}"), "--cluster_name", "rk-e2e",
             "--cluster", f"nats://127.0.0.1:{c}", "--routes", routes],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for p, _ in ports:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", p), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("nats-server did not start")
                time.sleep(0.05)
    return procs, ",".join(f"nats://127.0.0.1:{p}" for p, _ in ports)


def run_cluster(binary, data):
    """The chat walk against three nodes, requests spread in turn."""
    nats, urls = start_nats(data)
    procs, ports = [], []
    try:
        for node in (1, 2, 3):
            port = free_port()
            extra = ["--durability", "sync", "--nats", urls, "--node-id", str(node),
                     "--cluster-nodes", "1,2,3", "--cluster-name", "e2e"]
            procs.append(spawn(binary, os.path.join(data, f"node-{node}"), port, extra))
            ports.append(port)
        asyncio.run(scenario(ports, procs))
    finally:
        for p in procs + nats:
            if p.poll() is None:
                p.kill()
                p.wait()


def spawn(binary, data, port, extra):
    proc = subprocess.Popen(
        [binary, "--listen", f"127.0.0.1:{port}", "--data-dir", data, *extra],
        env={**os.environ, "RUST_LOG": "warn"},
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the server did not become ready")
        time.sleep(0.05)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    args = ap.parse_args()
    limit = 16 << 20
    runs = [
        (["--durability", "sync"], lambda port, proc: scenario([port], [proc])),
        (["--echo-endpoint", "--ws-frame-bytes-max", str(limit),
          "--conn-output-bytes-max", str(2 * limit)],
         lambda port, proc: echo_scenario(port, limit)),
    ]
    with tempfile.TemporaryDirectory() as data:
        for i, (extra, run) in enumerate(runs):
            port = free_port()
            proc = spawn(args.bin, os.path.join(data, str(i)), port, extra)
            try:
                asyncio.run(run(port, proc))
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        clustered = shutil.which("nats-server") is not None
        if clustered:
            run_cluster(args.bin, os.path.join(data, "cluster"))
    where = "one node and a 3-node cluster" if clustered else "one node (no nats-server on PATH)"
    print(f"python e2e (websockets {websockets.__version__}, {where}): ok, {CHECKS} checks")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"python e2e: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
