// What people who use Slack or Element every day expect of the client,
// one step per defect they found (issue 19), at 1280×800 and 390×844, in
// light and dark, each page and state audited by axe-core.

import { join } from "node:path";
import { audit, check, password, sendText, signUp, waitText, WAIT_MS } from "./lib.mjs";

const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
// Bigger than the server's 64 KiB WebSocket message: what a paste of a log
// file does.
const PASTE_BYTES = 70_000;

export async function expectations(browser, base, artifacts, watched) {
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
  await d.waitForSelector(`#my-rooms button:has-text("plaza_${suffix}")`, { timeout: WAIT_MS });
  check(true, "dave joined carol's room");

  await oversized(browser, base, { plaza, names, d, artifacts, shot, watched });
  await offlineOnPhone(p, { names, artifacts, shot, plaza });
  await everyScheme(browser, base, { plaza, names, artifacts, shot });
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
  await signIn(c, base, names.carol);
  await c.goto(`${base}/#room=${plaza}`);
  await c.reload();
  await c.waitForSelector('#conn[data-state="online"]', { state: "attached", timeout: WAIT_MS });
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
  await c.waitForSelector("#messages .msg.pending.failed", { timeout: WAIT_MS });
  const closes = await c.evaluate(() => window.rookery.state.session.closes - window.closesAtStart);
  check(closes <= 2, `refused after ${closes} closes (1009), not resent on every reconnect`);
  const failed = await c.textContent("#messages .msg.pending.failed .status");
  check(failed.includes("not sent") && failed.includes("too large"), `the row says it was not sent and why (${failed})`);
  await c.waitForSelector('#conn[data-state="online"]', { state: "attached", timeout: WAIT_MS });
  await sendText(c, "after the refused one");
  await waitText(d, "after the refused one");
  check(true, "later messages are not stuck behind the refused one");
  await shot(c, "oversized-failed.png");
  await audit(c, "a refused message, desktop, light", artifacts);
  await c.click('#messages .msg.pending.failed button:has-text("Discard")');
  await c.waitForFunction(() => !document.querySelector("#messages .msg.pending"), null, { timeout: WAIT_MS });
  const kept = await c.evaluate(() => localStorage.getItem("rookery.outbox." + window.rookery.state.auth.user));
  check(kept === null, "discarded, it is gone from the outbox kept across reloads");

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

// Defect 5: on a phone the room view says when the connection is down,
// and presence is unknown rather than stale.
async function offlineOnPhone(p, { names, artifacts, shot, plaza }) {
  console.log("a lost connection, seen on a phone");
  await p.goto(p.url().split("#")[0] + `#room=${plaza}`);
  await p.reload();
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
      await signIn(page, base, names.carol);
      await page.goto(`${base}/#room=${plaza}`);
      await page.reload();
      await page.waitForSelector("#composer:not([hidden])", { timeout: WAIT_MS });
      await waitText(page, "written offline");
      await audit(page, `a room, ${label}`, artifacts);
      await shot(page, `room-${size}-${colorScheme}.png`);
      if (size === "phone") {
        await page.click("#back");
        await audit(page, `the room list, ${label}`, artifacts);
      }
      await ctx.setOffline(true);
      await page.waitForSelector('#conn[data-state="offline"]', { state: "attached", timeout: WAIT_MS });
      await audit(page, `offline, ${label}`, artifacts);
      await ctx.setOffline(false);
      await page.goto(base + "/dashboard");
      await page.waitForSelector("#tile-connections .value", { timeout: WAIT_MS });
      await audit(page, `the dashboard, ${label}`, artifacts);
      await shot(page, `dashboard-${size}-${colorScheme}.png`);
      await ctx.close();
    }
  }
}

// Signs `name` in through the API and hands the page the session, as a
// returning user's saved session (no form: that is tested above).
async function signIn(page, base, name) {
  const res = await fetch(base + "/api/login", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name, password: password(name) }),
  });
  const s = await res.json();
  await page.goto(base + "/");
  await page.evaluate((s) => {
    localStorage.setItem("rookery.session", JSON.stringify({ user: s.user, name: s.name, token: s.token }));
  }, s);
}
