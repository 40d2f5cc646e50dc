// What the browser test's steps share: checks that count, signing up,
// sending and waiting for a message, and the accessibility audit (axe-core
// run in the page, WCAG 2.2 A and AA rules).

import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const WAIT_MS = 15_000;

let checks = 0;
let audits = 0;

export function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  checks++;
  console.log(`  ok ${checks}: ${what}`);
}

export const counted = () => ({ checks, audits });

export const texts = (page) => page.$$eval("#messages .msg .body", (els) => els.map((e) => e.textContent));

export const password = (name) => "correct horse " + name;

// Signs `name` up from the sign-in page: the form's "Create an account"
// mode, then Enter (which does what the button says).
export async function signUp(page, base, name) {
  await page.goto(base + "/");
  await page.click("#auth-switch");
  await page.waitForSelector('#auth-form[data-mode="register"]', { timeout: WAIT_MS });
  await page.fill("#auth-form input[name=name]", name);
  await page.fill("#auth-form input[name=password]", password(name));
  await page.press("#auth-form input[name=password]", "Enter");
  await page.waitForSelector("#app:not([hidden])", { timeout: WAIT_MS });
  await page.waitForSelector('#conn[data-state="online"]', { timeout: WAIT_MS });
}

export async function sendText(page, text) {
  await page.fill("#composer textarea", text);
  await page.press("#composer textarea", "Enter");
}

export async function waitText(page, text) {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll("#messages .msg .body")].some((e) => e.textContent === t),
    text,
    { timeout: WAIT_MS },
  );
}

// The session's token and user, from the page.
export const whoami = (page) => page.evaluate(() => window.rookery.state.auth);

// One call to the JSON API from the page, as its signed-in user.
export const apiCall = (page, method, path, body) =>
  page.evaluate(
    async ({ method, path, body }) => {
      const token = window.rookery.state.auth.token;
      const headers = { authorization: `Bearer ${token}` };
      if (body !== undefined) headers["content-type"] = "application/json";
      const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
      const text = await res.text();
      return { status: res.status, body: text ? JSON.parse(text) : null };
    },
    { method, path, body },
  );

const AXE_SOURCE = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");
// The rules of WCAG 2.0, 2.1 and 2.2 at levels A and AA.
const AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"];

// Runs axe-core on the page as it is now: any serious or critical
// finding fails the test, naming the rule and the first elements it hit
// (with a screenshot, `axe-<label>.png`).
export async function audit(page, label, artifacts) {
  // Evaluated (not a script tag): the server's CSP allows only its own
  // scripts, and the test must not loosen it.
  if (!(await page.evaluate(() => typeof window.axe === "object"))) await page.evaluate(AXE_SOURCE);
  const found = await page.evaluate(async (tags) => {
    const r = await window.axe.run(document, { runOnly: { type: "tag", values: tags }, resultTypes: ["violations"] });
    return r.violations
      .filter((v) => v.impact === "serious" || v.impact === "critical")
      .map((v) => ({
        rule: v.id,
        impact: v.impact,
        help: v.help,
        at: v.nodes.slice(0, 4).map((n) => `${n.target.join(" ")}: ${(n.failureSummary || "").replace(/\s+/g, " ")}`),
      }));
  }, AXE_TAGS);
  audits++;
  if (found.length) {
    const name = "axe-" + label.replace(/[^a-z0-9]+/gi, "-") + ".png";
    await page.screenshot({ path: join(artifacts, name) }).catch(() => null);
    console.error(JSON.stringify(found, null, 2));
  }
  check(found.length === 0, `axe-core: no serious or critical WCAG 2.2 AA finding — ${label}`);
}

async function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.on("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

// Starts `bin` on a free loopback port with a fresh data directory, `args`
// and a keys file of `keysToml` (`--api-keys-file`); resolves once it is
// ready: { base, proc, dataDir }.
export async function startRookery(bin, args, keysToml) {
  const port = await freePort();
  const dataDir = mkdtempSync(join(tmpdir(), "rookery-browser-"));
  const keys = join(dataDir, "keys.toml");
  writeFileSync(keys, keysToml);
  const proc = spawn(bin, ["--listen", `127.0.0.1:${port}`, "--data-dir", dataDir, "--api-keys-file", keys, ...args], {
    stdio: ["ignore", "inherit", "inherit"],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "warn" },
  });
  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      if ((await fetch(base + "/readyz")).ok) break;
    } catch (_) {}
    if (Date.now() > deadline || proc.exitCode !== null) throw new Error("rookery did not start");
    await new Promise((r) => setTimeout(r, 100));
  }
  return { base, proc, dataDir };
}
