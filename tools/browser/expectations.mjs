// What people who use Slack or Element every day expect of the client,
// one step per defect they found (issue 19), at 1280×800 and 390×844, in
// light and dark, each page and state audited by axe-core.

import { join } from "node:path";
import { createHash } from "node:crypto";
import { rmSync } from "node:fs";
import { audit, check, password, sendText, signUp, startRookery, waitText, WAIT_MS } from "./lib.mjs";

const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
// Bigger than the server's 64 KiB WebSocket message: what a paste of a log
// file does.
const PASTE_BYTES = 70_000;

export async function expectations(browser, base, artifacts, watched, bin) {
  const suffix = Date.now().toString(36).slice(-5);
  const names = { carol: `carol_${suffix}`, dave: `dave_${suffix}` };
  const shot = (page, name) => page.screenshot({ path: join(artifacts, name) });

  console.log("sign-up traps (phone, light)");
  const phone = await browser.newContext({ viewport: PHONE, colorScheme: "light", hasTouch: true, isMobile: true });
  const p = await phone.newPage();
  watched.push(["carol-phone", p]);
  await signUpCarefully(p, base, names.carol, { shot, artifacts });

  console.log("room names refused next to the form");
  await p.fill("#new-room input[name=name]", "my room");
  await p.click("#new-room button");
  const roomError = () => p.textContent("#new-room .error");
  check((await roomError()).includes("letters, digits"), `a bad room name is explained at the form (${await roomError()})`);
  await p.fill("#new-room input[name=name]", "plaza_" + suffix);
  await p.click("#new-room button");
  await p.waitForSelector(`#room-title:has-text("plaza_${suffix}")`, { timeout: WAIT_MS });
  const plaza = await p.evaluate(() => window.rookery.state.current);
  await p.click("#back");
  await p.fill("#new-room input[name=name]", "plaza_" + suffix);
  await p.click("#new-room button");
  await p.waitForFunction(() => document.querySelector("#new-room .error").textContent.includes("already"), null, {
    timeout: WAIT_MS,
  });
  check(true, `a taken room name says so at the form (${await roomError()})`);
  await shot(p, "phone-new-room-error.png");
  await audit(p, "the room list with an error, phone, light", artifacts);

  console.log("a second person in the room");
  const desk = await browser.newContext({ viewport: DESKTOP, colorScheme: "light" });
  const d = await desk.newPage();
  watched.push(["dave", d]);
  await signUp(d, base, names.dave);
  await d.click(`#other-rooms button:has-text("plaza_${suffix}")`);
  await d.waitForSelector("#join-bar:not([hidden])", { timeout: WAIT_MS });
  await audit(d, "a public room previewed before joining, desktop, light", artifacts);
  await d.click("#join");
  await d.waitForSelector(`#my-rooms button:has-text("plaza_${suffix}")`, { timeout: WAIT_MS });
  check(await d.isVisible("#composer"), "dave previewed carol's room, then joined it");

  await oversized(browser, base, { plaza, names, d, artifacts, shot, watched });
  // Carol's phone would read the backlog as it arrives: it is put away.
  await p.goto("about:blank");
  await backlog(browser, base, { plaza, names, d, artifacts, shot, watched });
  await reading(browser, base, { plaza, names, d, artifacts, shot, watched });
  await formatting(browser, base, { plaza, names, d, artifacts, shot, watched });
  await offlineOnPhone(p, base, { names, artifacts, shot, plaza });
  await everyScheme(browser, base, { plaza, names, artifacts, shot });
  await dashboardKey(browser, bin, { artifacts, shot });
  await membership(browser, base, { names, d, artifacts, shot, watched });
  await phone.close();
  await desk.close();
}

// Defect 6: Enter does what the button says, a bad name or short password
// is explained before anything is sent, a taken name is named, the name
// field does not capitalise.
async function signUpCarefully(p, base, name, { shot, artifacts }) {
  await p.goto(base + "/");
  await p.waitForSelector("#auth:not([hidden])", { timeout: WAIT_MS });
  const field = await p.$eval("#auth-form input[name=name]", (i) => ({
    cap: i.getAttribute("autocapitalize"),
    spell: i.spellcheck,
  }));
  check(field.cap === "none" && !field.spell, "the name field neither capitalises nor spell-checks");
  await audit(p, "the sign-in form, phone, light", artifacts);
  const error = () => p.textContent("#auth-form .error");
  await p.fill("#auth-form input[name=name]", name);
  await p.fill("#auth-form input[name=password]", password(name));
  await p.press("#auth-form input[name=password]", "Enter");
  await p.waitForFunction(() => document.querySelector("#auth-form .error").textContent !== "", null, {
    timeout: WAIT_MS,
  });
  check((await error()) === "Wrong name or password.", `Enter on "Sign in" signs in, and says why it cannot (${await error()})`);
  await p.click("#auth-switch");
  check((await p.textContent("#auth-submit")) === "Create account", "the form switches to creating an account");
  check((await error()) === "", "switching clears the old error");
  const hint = await p.textContent("#password-hint");
  check(hint.includes("8 characters"), `the server's password minimum is said up front (${hint})`);
  await p.fill("#auth-form input[name=name]", "Carol Smith");
  await p.press("#auth-form input[name=password]", "Enter");
  check((await error()).includes("letters, digits"), `a name with a space is explained (${await error()})`);
  await p.type("#auth-form input[name=name]", "x");
  check((await error()) === "", "the error goes once the name is changed");
  await p.fill("#auth-form input[name=name]", name);
  await p.fill("#auth-form input[name=password]", "short");
  await p.press("#auth-form input[name=password]", "Enter");
  check((await error()).includes("at least 8 characters"), `a short password is refused here (${await error()})`);
  const taken = await fetch(base + "/api/register", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name: name + "_t", password: password(name) }),
  });
  check(taken.status === 201, "someone else takes a name");
  await p.fill("#auth-form input[name=name]", name + "_T");
  await p.fill("#auth-form input[name=password]", password(name));
  await p.press("#auth-form input[name=password]", "Enter");
  await p.waitForFunction(() => document.querySelector("#auth-form .error").textContent.includes("taken"), null, {
    timeout: WAIT_MS,
  });
  check(true, `a taken name (in another case) is named as taken (${await error()})`);
  await shot(p, "phone-sign-up-taken.png");
  await p.fill("#auth-form input[name=name]", name);
  await p.press("#auth-form input[name=password]", "Enter");
  await p.waitForSelector('#conn[data-state="online"]', { state: "attached", timeout: WAIT_MS });
  check(true, "with a good name and password Enter creates the account");
}

// Defect 1: a message over the server's limit is refused before it is
// sent, with the text kept; one the server refuses is never sent again;
// unsent messages survive a reload.
async function oversized(browser, base, { plaza, names, d, artifacts, shot, watched }) {
  console.log("an oversized message");
  const ctx = await browser.newContext({ viewport: DESKTOP, colorScheme: "light" });
  const c = await ctx.newPage();
  watched.push(["carol", c]);
  await signIn(c, base, names.carol, `/#room=${plaza}`);
  await c.waitForSelector("#composer:not([hidden])", { timeout: WAIT_MS });
  await c.evaluate(() => (window.socketAtStart = window.rookery.state.session.ws));
  const big = "x".repeat(PASTE_BYTES);
  await c.fill("#composer textarea", big);
  await c.press("#composer textarea", "Enter");
  const said = await c.textContent("#composer-error");
  check(said.includes("at most") && said.includes("attach it as a file"), `a 70 KB message is refused before sending (${said})`);
  check((await c.inputValue("#composer textarea")).length === PASTE_BYTES, "its text stays in the composer");
  check((await c.$$("#messages .msg.pending")).length === 0, "nothing waits to be sent");
  await shot(c, "oversized-refused.png");
  await audit(c, "an oversized message refused, desktop, light", artifacts);
  await sendText(c, "after the big one");
  await waitText(d, "after the big one");
  const same = await c.evaluate(() => window.rookery.state.session.ws === window.socketAtStart);
  check(same, "the next message goes on the same socket (the server never closed it)");

  console.log("a message the server refuses (the client not knowing its limit)");
  await c.evaluate(() => {
    const s = window.rookery.state;
    s.session.frameBytesMax = 1 << 30;
    s.limits.ws_frame_bytes_max = 1 << 30;
    s.limits.message_body_bytes_max = 1 << 30;
    window.closesAtStart = s.session.closes;
  });
  await c.fill("#composer textarea", big);
  await c.press("#composer textarea", "Enter");
  // A normal message goes out on the same socket, right behind it.
  await sendText(c, "beside the big one");
  await c.waitForSelector("#messages .msg.pending.failed", { timeout: WAIT_MS });
  await waitText(d, "beside the big one");
  check(true, "the message sent beside the oversized one arrives");
  await c.waitForTimeout(2000);
  const closes = await c.evaluate(() => window.rookery.state.session.closes - window.closesAtStart);
  check(closes <= 2, `refused after ${closes} closes (1009), and not sent again after that`);
  const beside = await d.$$eval("#messages .msg .body", (els) => els.filter((e) => e.textContent === "beside the big one").length);
  check(beside === 1, "the message beside it arrives once");
  const stored = await c.evaluate(() => localStorage.getItem("rookery.outbox." + window.rookery.state.auth.user));
  check(!stored || !stored.includes("xxxxxxxxxx"), "refused, it is out of the stored outbox: a reload does not send it");
  const failed = await c.textContent("#messages .msg.pending.failed .status");
  check(failed.includes("not sent") && failed.includes("too large"), `the row says it was not sent and why (${failed})`);
  await c.waitForSelector('#conn[data-state="online"]', { state: "attached", timeout: WAIT_MS });
  await sendText(c, "after the refused one");
  await waitText(d, "after the refused one");
  check(true, "later messages are not stuck behind the refused one");
  await shot(c, "oversized-failed.png");
  await audit(c, "a refused message, desktop, light", artifacts);
  console.log("the dashboard shows what happened");
  const dash = await ctx.newPage();
  await dash.goto(base + "/dashboard");
  await dash.waitForFunction(() => document.querySelector("#closes")?.textContent.includes("1009 message too big"), null, {
    timeout: WAIT_MS,
  });
  check(true, "the server's 1009 closes show on the dashboard, by code");
  const head = await dash.textContent("#status");
  check(/^v\d+\.\d+\.\d+ · up \d/.test(head), `the dashboard says the version and uptime (${head})`);
  const users = Number((await dash.textContent("#tile-users .value")).replace(/,/g, ""));
  check(users >= 2, `it counts the users (${users})`);
  check(/iB$/.test(await dash.textContent("#tile-disk .value")), "and the data on disk");
  check((await dash.$$("#tiles .tile .axis")).length > 0, "its sparklines have a time axis");
  const live = await dash.$$eval("[aria-live], [role=status], [role=alert]", (els) =>
    els.filter((e) => !e.hidden && e.textContent.trim()).map((e) => e.id),
  );
  check(live.length === 0, `nothing is announced while the server is reachable (${live.join(",")})`);
  await shot(dash, "dashboard-closes.png");
  await dash.close();
  await c.click('#messages .msg.pending.failed button:has-text("Discard")');
  await c.waitForFunction(() => !document.querySelector("#messages .msg.pending"), null, { timeout: WAIT_MS });
  check(true, "Discard takes the refused message off the room");

  console.log("unsent messages survive a reload");
  await ctx.setOffline(true);
  await c.waitForSelector('#conn[data-state="offline"]', { state: "attached", timeout: WAIT_MS });
  await sendText(c, "written offline");
  const waiting = await c.textContent("#messages .msg.pending .status");
  check(waiting.includes("waiting for the connection"), `offline, the message waits and says so (${waiting})`);
  await c.close();
  await ctx.setOffline(false);
  const again = await ctx.newPage();
  watched.push(["carol-again", again]);
  await again.goto(`${base}/#room=${plaza}`);
  await waitText(d, "written offline");
  await waitText(again, "written offline");
  await again.waitForFunction(() => !document.querySelector("#messages .msg.pending"), null, { timeout: WAIT_MS });
  await d.waitForTimeout(500);
  const copies = await d.$$eval("#messages .msg .body", (els) => els.filter((e) => e.textContent === "written offline").length);
  check(copies === 1, "a message written offline and the tab closed is sent when the client is back, once");
  await ctx.close();
}

// Posts `n` messages to `room` as the page's user, over HTTP, one after
// another (so their seqs follow their numbers).
const post = (page, room, n, prefix) =>
  page.evaluate(
    async ({ room, n, prefix }) => {
      const token = window.rookery.state.auth.token;
      for (let k = 1; k <= n; k++) {
        const res = await fetch(`/api/rooms/${room}/messages`, {
          method: "POST",
          headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
          body: JSON.stringify({ body: `${prefix} ${k}`, client_id: `${prefix}-${k}` }),
        });
        if (res.status !== 201) throw new Error(`posting ${prefix} ${k}: ${res.status}`);
      }
    },
    { room, n, prefix },
  );

// The signed-in user's unread count of `room`, as the server has it.
const serverUnread = (page, room) =>
  page.evaluate(async (room) => {
    const token = window.rookery.state.auth.token;
    const res = await fetch("/api/me/unread", { headers: { authorization: `Bearer ${token}` } });
    return (await res.json()).rooms.find((x) => x.room === room)?.unread;
  }, room);

// Defects 2 and 3: a backlog of more than a page opens at its first
// unread message, is marked read only as it is shown, and there are ways
// to the first unread and to the latest.
async function backlog(browser, base, { plaza, names, d, artifacts, shot, watched }) {
  // More than two history pages (500 each in this test).
  const BACKLOG = 1_100;
  console.log(`a backlog of ${BACKLOG} unread messages`);
  const ctx = await browser.newContext({ viewport: DESKTOP, colorScheme: "light" });
  const c = await ctx.newPage();
  watched.push(["carol-backlog", c]);
  await signIn(c, base, names.carol);
  // Carol reads the room to its end elsewhere, then is away.
  await c.evaluate(async (room) => {
    const token = window.rookery.state.auth.token;
    const page = await (await fetch(`/api/rooms/${room}/messages?limit=1`, { headers: { authorization: `Bearer ${token}` } })).json();
    const seq = page.messages[0].seq;
    await window.rookery.state.session.request({ type: "read", room, seq });
  }, plaza);
  const token = await c.evaluate(() => window.rookery.state.auth.token);
  await c.goto("about:blank");
  await post(d, plaza, BACKLOG, "backlog");
  check((await serverUnread(d, plaza)) === 0, "dave's own messages are not unread to him");
  const unreadOf = async () => {
    const res = await fetch(`${base}/api/me/unread`, { headers: { authorization: `Bearer ${token}` } });
    return (await res.json()).rooms.find((x) => x.room === plaza)?.unread;
  };
  check((await unreadOf()) === BACKLOG, `carol has ${BACKLOG} unread before she opens the room (${await unreadOf()})`);
  await c.goto(`${base}/#room=${plaza}`);
  await c.waitForSelector('#messages .msg.first-unread:has-text("backlog 1")', { timeout: WAIT_MS });
  await c.waitForTimeout(1500);
  const first = await c.evaluate(() => {
    const row = document.querySelector("#messages .msg.first-unread");
    const box = document.querySelector("#messages").getBoundingClientRect();
    const r = row.getBoundingClientRect();
    return { inView: r.top >= box.top - 1 && r.top < box.bottom, text: row.querySelector(".body").textContent };
  });
  check(first.inView && first.text === "backlog 1", "the room opens at the first unread message, marked new");
  const left = await serverUnread(c, plaza);
  check(left > BACKLOG - 60 && left < BACKLOG, `only what was shown is marked read (server unread ${BACKLOG} → ${left})`);
  check(await c.isVisible("#jump-latest"), "a way to the latest shows while the backlog is below");
  await shot(c, "backlog-first-unread.png");
  await audit(c, "a backlog opened at its first unread, desktop, light", artifacts);
  await c.focus("#messages");
  await c.keyboard.press("End");
  await c.waitForFunction((last) => document.activeElement.querySelector?.(".body")?.textContent === last, `backlog ${BACKLOG}`, {
    timeout: WAIT_MS,
  });
  const atBottom = await c.evaluate(() => {
    const s = document.querySelector("#messages");
    return s.scrollHeight - s.scrollTop - s.clientHeight < 4;
  });
  check(atBottom, "End goes all the way to the latest message and focuses it");
  let unread = await serverUnread(c, plaza);
  for (let waited = 0; unread !== 0 && waited < WAIT_MS; waited += 200) {
    await c.waitForTimeout(200);
    unread = await serverUnread(c, plaza);
  }
  check(unread === 0, "at the latest, the room is read (server unread 0)");
  check(await c.isHidden("#jump-latest"), "at the bottom, the pill goes");

  console.log("new messages while scrolled up");
  await c.evaluate(() => (document.querySelector("#messages").scrollTop = 0));
  await c.waitForTimeout(300);
  await post(d, plaza, 3, "meanwhile");
  await c.waitForFunction(() => document.querySelector("#jump-latest").textContent.includes("3 new messages"), null, {
    timeout: WAIT_MS,
  });
  check(true, "scrolled up, a pill counts the 3 new messages");
  await shot(c, "new-messages-pill.png");
  await audit(c, "the new-messages pill, desktop, light", artifacts);
  await c.click("#jump-latest");
  await c.waitForFunction(() => document.activeElement.querySelector?.(".body")?.textContent === "meanwhile 3", null, {
    timeout: WAIT_MS,
  });
  check(true, "the pill goes to the latest message");
  await ctx.close();
}

// Defects 8 and 9: dates, day lines, grouping, a short room by the
// composer, no "typing" while editing; messages a screen reader can tell
// apart, named actions, a short Tab path, a skip link and Ctrl+K.
async function reading(browser, base, { plaza, names, d, artifacts, shot, watched }) {
  console.log("time, density and the keyboard");
  const ctx = await browser.newContext({ viewport: DESKTOP, colorScheme: "dark" });
  const c = await ctx.newPage();
  watched.push(["carol-reading", c]);
  await signIn(c, base, names.carol, `/#room=${plaza}`);
  await waitText(c, "meanwhile 3");
  const meta = await c.evaluate(() => {
    const rows = [...document.querySelectorAll("#messages .msg[data-seq]:not(.placeholder)")];
    const last = rows.sort((a, b) => a.dataset.seq - b.dataset.seq).at(-1);
    return {
      title: last.querySelector("time").title,
      grouped: last.classList.contains("grouped"),
      role: last.getAttribute("role"),
      label: last.getAttribute("aria-label"),
    };
  });
  check(/\d{4}/.test(meta.title), `a message's time has its full date as a tooltip (${meta.title})`);
  check(meta.grouped, "a run of one author's messages is grouped under one name");
  check(meta.role === "article" && meta.label.startsWith(names.dave), `a message is an article named by its author and time (${meta.label})`);

  // A new room with two messages: they sit by the composer, under "Today".
  await c.fill("#new-room input[name=name]", "short_" + Date.now().toString(36).slice(-5));
  await c.click("#new-room button");
  await c.waitForSelector("#composer:not([hidden])", { timeout: WAIT_MS });
  await sendText(c, "first words");
  await sendText(c, "second words");
  await waitText(c, "second words");
  await c.waitForFunction(() => !document.querySelector("#messages .msg.pending"), null, { timeout: WAIT_MS });
  const gap = await c.evaluate(() => {
    const box = document.querySelector("#messages").getBoundingClientRect();
    const rows = [...document.querySelectorAll("#messages .msg")].map((r) => r.getBoundingClientRect().bottom);
    return box.bottom - Math.max(...rows);
  });
  check(gap < 8, `a short room's messages sit at the bottom, by the composer (${Math.round(gap)} px above it)`);
  check((await c.textContent("#messages .day")) === "Today", "a day line says which day");
  const actions = await c.$$eval('#messages .msg:has-text("second words") .actions button', (bs) =>
    bs.map((b) => b.getAttribute("aria-label")),
  );
  check(
    actions.includes("Edit your message “second words”") && actions.includes("Delete your message “second words”"),
    `each action names the message it acts on (${actions.join("; ")})`,
  );
  await shot(c, "short-room-dark.png");
  await audit(c, "a short room, desktop, dark", artifacts);

  console.log("the Tab path");
  await c.focus("#messages");
  const path = [];
  for (let i = 0; i < 4; i++) {
    await c.keyboard.press("Tab");
    path.push(await c.evaluate(() => document.activeElement.id || document.activeElement.className || document.activeElement.tagName));
    if (path.at(-1) === "composer-body") break;
  }
  check(path.at(-1) === "composer-body" && path.length <= 2, `from the messages, Tab reaches the message box in ${path.length} (${path.join(" → ")})`);
  // The focused message's body (the focus moves on the next frame).
  const focusedOn = (text) =>
    c.waitForFunction(
      (t) => document.activeElement.matches(".msg[data-seq]") && document.activeElement.querySelector(".body")?.textContent === t,
      text,
      { timeout: WAIT_MS },
    );
  await c.focus("#messages");
  await c.keyboard.press("ArrowUp");
  await focusedOn("second words");
  check(true, "↑ in the messages focuses the newest");
  await c.keyboard.press("ArrowUp");
  await focusedOn("first words");
  check(true, "↑ again, the one before");
  await c.keyboard.press("Tab");
  const onAction = await c.evaluate(() => document.activeElement.getAttribute("aria-label"));
  check(onAction?.includes("first words"), `Tab from a message reaches its actions (${onAction})`);

  console.log("skip link and Ctrl+K");
  await c.reload();
  await c.waitForSelector("#composer:not([hidden])", { timeout: WAIT_MS });
  const first = await c.evaluate(() => document.body.firstElementChild.matches("a.skip[href]"));
  check(first, "the page's first element, so its first Tab stop, is a skip link");
  await c.focus("a.skip");
  const shown = await c.$eval("a.skip", (a) => a.getBoundingClientRect().left >= 0);
  check(shown, "focused, the skip link shows");
  await c.keyboard.press("Enter");
  check((await c.evaluate(() => document.activeElement.id)) === "composer-body", "it goes to the message box");
  await c.keyboard.press("Control+k");
  await c.waitForSelector("#switcher[open]", { timeout: WAIT_MS });
  await audit(c, "the room switcher, desktop, dark", artifacts);
  await c.keyboard.type("plaza");
  await c.keyboard.press("Enter");
  await c.waitForSelector('#room-title:has-text("plaza")', { timeout: WAIT_MS });
  check(await c.isHidden("#switcher"), "Ctrl+K, a few letters and Enter open the room");

  console.log("editing is not typing");
  await sendText(c, "one to edit");
  await waitText(d, "one to edit");
  await d.waitForFunction(() => document.querySelector("#typing").textContent === "", null, { timeout: WAIT_MS });
  await c.focus("#composer-body");
  await c.keyboard.press("ArrowUp");
  await c.waitForSelector("#composer.editing", { timeout: WAIT_MS });
  await c.type("#composer-body", " and more");
  await d.waitForTimeout(1500);
  check((await d.textContent("#typing")) === "", "editing a message does not show the others “typing”");
  await c.keyboard.press("Escape");
  await ctx.close();
}

// Defect 7: a safe Markdown subset, links, @mentions that notify, and
// the unread count in the tab's title.
async function formatting(browser, base, { plaza, names, d, artifacts, shot, watched }) {
  console.log("formatting, mentions and notifications");
  const ctx = await browser.newContext({ viewport: DESKTOP, colorScheme: "light" });
  await ctx.grantPermissions(["notifications"], { origin: base });
  // Notifications shown are recorded (headless Chromium shows none).
  await ctx.addInitScript(() => {
    window.shownNotes = [];
    const Shown = window.Notification;
    window.Notification = class extends Shown {
      constructor(title, options) {
        super(title, options);
        window.shownNotes.push(title);
      }
    };
  });
  const c = await ctx.newPage();
  watched.push(["carol-formatting", c]);
  await signIn(c, base, names.carol);
  await c.fill("#new-room input[name=name]", "quiet_" + Date.now().toString(36).slice(-5));
  await c.click("#new-room button");
  await c.waitForSelector("#composer:not([hidden])", { timeout: WAIT_MS });
  check(await c.isHidden("#notify-on"), "with notifications allowed, the sidebar does not ask again");
  const body = [
    `**bold** and _slanted_ and \`code\` at https://example.com/a?b=1, for @${names.carol}.`,
    "<img src=x onerror=\"window.injected=1\"> <script>window.injected=2</script>",
    "```",
    "let x = 1 < 2;",
    "```",
  ].join("\n");
  await d.evaluate(
    ({ room, body }) => window.rookery.state.session.send(room, body).acked,
    { room: plaza, body },
  );
  // Bodies shaped to make a careless Markdown parser take minutes: a link
  // with a long run of dots, and thousands of tiny pieces.
  const crafted = ["https://a" + ".".repeat(30_000) + "b", "`a` @b ".repeat(6_000)];
  for (const body of crafted) {
    await d.evaluate(({ room, body }) => window.rookery.state.session.send(room, body).acked, { room: plaza, body });
  }
  await c.waitForFunction(() => document.title.startsWith("(3)"), null, { timeout: WAIT_MS });
  check(true, `another room's message shows in the tab's title (${await c.title()})`);
  await c.waitForFunction(() => window.shownNotes.length > 0, null, { timeout: WAIT_MS });
  const note = await c.evaluate(() => window.shownNotes[0]);
  check(note.includes(names.dave) && note.includes("plaza"), `a mention in another room notifies (${note})`);
  await c.keyboard.press("Control+k");
  await c.keyboard.type("plaza");
  await c.keyboard.press("Enter");
  await c.waitForSelector("#messages .msg.mentions-me", { timeout: WAIT_MS });
  await waitText(c, crafted[0]);
  const pieces = await c.$$eval("#messages .msg .body", (bs) => Math.max(...bs.map((b) => b.querySelectorAll("code").length)));
  check(pieces <= 2000, `bodies made to stall a parser are drawn at once, their pieces bounded (${pieces} code spans)`);
  const shown = await c.$eval("#messages .msg.mentions-me .body", (b) => ({
    strong: b.querySelector("strong")?.textContent,
    em: b.querySelector("em")?.textContent,
    code: b.querySelector(":scope > code")?.textContent,
    href: b.querySelector("a")?.getAttribute("href"),
    rel: b.querySelector("a")?.rel,
    mention: b.querySelector(".mention.me")?.textContent,
    pre: b.querySelector("pre code")?.textContent,
    elements: [...b.querySelectorAll("*")].map((e) => e.tagName.toLowerCase()),
    text: b.textContent,
  }));
  check(shown.strong === "bold" && shown.em === "slanted" && shown.code === "code", "bold, italic and inline code are drawn");
  check(shown.href === "https://example.com/a?b=1" && shown.rel.includes("noopener"), `a URL is a safe link, without the sentence's comma (${shown.href})`);
  check(shown.mention === "@" + names.carol, "a mention of the reader is marked");
  check(shown.pre === "let x = 1 < 2;", "a fenced block is code, as written");
  check(
    !shown.elements.includes("img") && !shown.elements.includes("script") && shown.text.includes("<img src=x"),
    `HTML in a message is text (${shown.elements.join(",")})`,
  );
  check((await c.evaluate(() => window.injected)) === undefined, "nothing in it ran");
  await c.waitForFunction(() => document.title === "Rookery", null, { timeout: WAIT_MS });
  check(true, "read, the title has no count");
  await shot(c, "formatting.png");
  await audit(c, "formatted messages, desktop, light", artifacts);
  await ctx.close();
}

// Defect 5: on a phone the room view says when the connection is down,
// and presence is unknown rather than stale.
async function offlineOnPhone(p, base, { names, artifacts, shot, plaza }) {
  console.log("a lost connection, seen on a phone");
  await p.goto(`${base}/#room=${plaza}`);
  await p.waitForSelector('#conn[data-state="online"]', { state: "attached", timeout: WAIT_MS });
  await p.waitForFunction((n) => document.querySelector("#online").textContent.includes(n), names.dave, {
    timeout: WAIT_MS,
  });
  check(await p.isVisible("#messages"), "the phone shows the room");
  check(await p.isHidden("#room-conn"), "online, no connection banner");
  await p.context().setOffline(true);
  await p.waitForSelector("#room-conn:not([hidden])", { timeout: WAIT_MS });
  const bar = await p.textContent("#room-conn");
  check(bar.startsWith("Offline") && (await p.isVisible("#room-conn")), `the room view says it is offline (${bar})`);
  const online = await p.textContent("#online");
  check(!online.includes(names.dave) && online.includes("unknown"), `presence is unknown, not stale (${online})`);
  await shot(p, "phone-offline.png");
  await audit(p, "offline, phone, light", artifacts);
  await p.context().setOffline(false);
  await p.waitForSelector("#room-conn", { state: "hidden", timeout: WAIT_MS });
  await p.waitForFunction((n) => document.querySelector("#online").textContent.includes(n), names.dave, {
    timeout: WAIT_MS,
  });
  check(true, "back online, the banner goes and presence is current again");
}

// The pages and states in both color schemes at both sizes, audited.
async function everyScheme(browser, base, { plaza, names, artifacts, shot }) {
  for (const colorScheme of ["light", "dark"]) {
    for (const [size, viewport] of [
      ["desktop", DESKTOP],
      ["phone", PHONE],
    ]) {
      const label = `${size}, ${colorScheme}`;
      console.log(`audit: ${label}`);
      const ctx = await browser.newContext({ viewport, colorScheme, hasTouch: size === "phone" });
      const page = await ctx.newPage();
      await page.goto(base + "/");
      await page.waitForSelector("#auth:not([hidden])", { timeout: WAIT_MS });
      await audit(page, `sign-in, ${label}`, artifacts);
      await signIn(page, base, names.carol, `/#room=${plaza}`);
      await page.waitForSelector("#composer:not([hidden])", { timeout: WAIT_MS });
      await waitText(page, "one to edit");
      await audit(page, `a room, ${label}`, artifacts);
      await shot(page, `room-${size}-${colorScheme}.png`);
      if (size === "phone") {
        await page.click("#back");
        check(await page.isVisible("#notify-on"), `the room list offers notifications (${label})`);
        await audit(page, `the room list, ${label}`, artifacts);
      }
      await ctx.setOffline(true);
      await page.waitForSelector('#conn[data-state="offline"]', { state: "attached", timeout: WAIT_MS });
      await audit(page, `offline, ${label}`, artifacts);
      await ctx.setOffline(false);
      await page.goto(base + "/dashboard");
      await page.waitForFunction(() => document.querySelector("#tile-connections .value").textContent !== "–", null, {
        timeout: WAIT_MS,
      });
      const fits = await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth);
      check(fits, `the dashboard fits the screen, its tables scrolling in their tiles (${label})`);
      await audit(page, `the dashboard, ${label}`, artifacts);
      await shot(page, `dashboard-${size}-${colorScheme}.png`);
      await ctx.close();
    }
  }
}

// Defect 4: a room's members, their roles, removal, bans and leaving,
// from the client.
async function membership(browser, base, { names, d, artifacts, shot, watched }) {
  console.log("members: roles, removal, bans, leaving");
  const ctx = await browser.newContext({ viewport: PHONE, colorScheme: "light", hasTouch: true });
  const c = await ctx.newPage();
  watched.push(["carol-members", c]);
  await signIn(c, base, names.carol);
  const team = "team_" + Date.now().toString(36).slice(-5);
  // The phone opens the last room: back to the list.
  await c.waitForSelector("#app:not([hidden])", { timeout: WAIT_MS });
  await c.waitForTimeout(300);
  if (await c.isVisible("#back")) await c.click("#back");
  await c.fill("#new-room input[name=name]", team);
  await c.click("#new-room button");
  await c.waitForSelector("#composer:not([hidden])", { timeout: WAIT_MS });
  await d.click(`#other-rooms button:has-text("${team}")`).catch(async () => {
    // Rooms made by others come with the next refresh of the list.
    await d.reload();
    await d.click(`#other-rooms button:has-text("${team}")`, { timeout: WAIT_MS });
  });
  await d.click("#join");
  await d.waitForSelector(`#my-rooms button:has-text("${team}")`, { timeout: WAIT_MS });
  const daveRow = `#member-list li:has-text("${names.dave}")`;
  const roleOf = () => c.textContent(`${daveRow} .role`);
  await c.click("#members-open");
  await c.waitForSelector(daveRow, { timeout: WAIT_MS });
  check((await roleOf()) === "member" && (await c.textContent("#member-list")).includes("owner"), "the panel lists the members with their roles");
  await shot(c, "phone-members.png");
  await audit(c, "the members panel, phone, light", artifacts);
  await c.click(`${daveRow} button:has-text("Make admin")`);
  await c.waitForSelector(`${daveRow} .role:text-is("admin")`, { timeout: WAIT_MS });
  check(true, "the owner makes dave an admin");
  await c.click(`${daveRow} button:has-text("Make member")`);
  await c.waitForSelector(`${daveRow} .role:text-is("member")`, { timeout: WAIT_MS });
  check(true, "and a member again");
  await c.click(`${daveRow} button:has-text("Remove")`);
  await d.waitForSelector('#notice:not([hidden]):has-text("You were removed")', { timeout: WAIT_MS });
  check(await d.isHidden("#composer"), "removed, dave is told, and cannot write");
  await c.waitForSelector(daveRow, { state: "detached", timeout: WAIT_MS });
  await d.click("#join");
  await c.click("#members-close");
  await c.click("#members-open");
  await c.waitForSelector(daveRow, { timeout: WAIT_MS });
  await c.click(`${daveRow} button:has-text("Ban")`);
  await c.waitForSelector(`#ban-list li:has-text("${names.dave}")`, { timeout: WAIT_MS });
  check(await d.isHidden("#composer"), "banned, dave is out, and listed as banned");
  await c.click(`#ban-list li:has-text("${names.dave}") button:has-text("Unban")`);
  await c.waitForSelector("#bans-title", { state: "hidden", timeout: WAIT_MS });
  check(true, "the ban is lifted from the panel");
  c.once("dialog", (dialog) => dialog.accept());
  await c.click("#leave");
  await c.waitForFunction(() => document.querySelector("#members-error").textContent.includes("owner"), null, {
    timeout: WAIT_MS,
  });
  check(true, `the owner cannot leave without handing the room on, and is told (${await c.textContent("#members-error")})`);
  await ctx.close();
  await d.reload();
  await d.waitForSelector('#conn[data-state="online"]', { state: "attached", timeout: WAIT_MS });
  await d.click(`#other-rooms button:has-text("${team}")`);
  await d.click("#join");
  await d.waitForSelector("#composer:not([hidden])", { timeout: WAIT_MS });
  await d.click("#members-open");
  d.once("dialog", (dialog) => dialog.accept());
  await d.click("#leave");
  await d.waitForSelector("#join-bar:not([hidden])", { timeout: WAIT_MS });
  check(await d.isHidden("#composer"), "a member leaves from the panel; the room stays readable, to join again");
}

// Defect 10: with --dashboard-access key the dashboard asks for a server
// API key with the stats scope, says why one is refused, and shows the
// figures once given one.
async function dashboardKey(browser, bin, { artifacts, shot }) {
  console.log("a dashboard that takes a key");
  const [stats, other] = [`rk_${"a".repeat(64)}`, `rk_${"b".repeat(64)}`];
  const entry = (name, key, scope) =>
    `[[key]]\nname = "${name}"\nsha256 = "${createHash("sha256").update(key).digest("hex")}"\nscopes = ["${scope}"]\n`;
  const server = await startRookery(bin, ["--dashboard-access", "key"], entry("watch", stats, "stats") + entry("news", other, "publish"));
  try {
    const ctx = await browser.newContext({ viewport: PHONE, colorScheme: "dark" });
    const page = await ctx.newPage();
    await page.goto(server.base + "/dashboard");
    await page.waitForSelector("#key-form:not([hidden])", { timeout: WAIT_MS });
    check(true, "without a key the dashboard asks for one");
    await audit(page, "the dashboard's key form, phone, dark", artifacts);
    await page.fill("#key-form input[name=key]", other);
    await page.press("#key-form input[name=key]", "Enter");
    await page.waitForFunction(() => document.querySelector("#key-form .error").textContent.includes("stats scope"), null, {
      timeout: WAIT_MS,
    });
    check(true, "a key without the stats scope is refused, saying why");
    await page.fill("#key-form input[name=key]", stats);
    await page.press("#key-form input[name=key]", "Enter");
    await page.waitForSelector("#key-form", { state: "hidden", timeout: WAIT_MS });
    await page.waitForFunction(() => document.querySelector("#status").textContent.includes("up "), null, { timeout: WAIT_MS });
    check(true, "with a stats key the figures show");
    await shot(page, "dashboard-key-phone-dark.png");
    await ctx.close();
  } finally {
    server.proc.kill("SIGTERM");
    await new Promise((r) => server.proc.once("exit", r));
    rmSync(server.dataDir, { recursive: true, force: true });
  }
}

// Signs `name` in through the API and hands the page the session, as a
// returning user's saved session (no form: that is tested above), then
// loads the client at `path` and waits for it to be online.
async function signIn(page, base, name, path = "/") {
  const res = await fetch(base + "/api/login", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name, password: password(name) }),
  });
  const s = await res.json();
  // A page of the origin that is not the client, to store the session in.
  await page.goto(base + "/favicon.svg");
  await page.evaluate((s) => {
    localStorage.setItem("rookery.session", JSON.stringify({ user: s.user, name: s.name, token: s.token }));
  }, s);
  await page.goto(base + path);
  await page.waitForSelector('#conn[data-state="online"]', { state: "attached", timeout: WAIT_MS });
}
