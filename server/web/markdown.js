// A small, safe subset of Markdown for message bodies, rendered straight
// to DOM nodes (text nodes and a few elements built here): no HTML from a
// message is ever parsed, so a body cannot inject markup or script.
//
// Understood: ``` fenced code blocks ```, `inline code`, **bold**,
// *italic* or _italic_, ~~struck~~, bare http(s) links, and @name
// mentions. Everything else is text, shown as written (line breaks kept
// by the stylesheet's pre-wrap).

// A fenced code block's opening or closing line.
const FENCE = /^```[^\n]*\n?/m;
// An @name mention (not an e-mail address's @, nor one after a dot).
const MENTION = /(?<![\w@.])@([A-Za-z0-9_.-]*[A-Za-z0-9_-])/g;

// Inline forms; the earliest match wins (ties go to the first listed).
// Code and links take no formatting inside. Each pattern is linear: what
// it may span stops at the next character that could close it, so a
// crafted body costs a scan, not a backtracking search.
const INLINE = [
  { kind: "code", re: /`([^`\n]+)`/g },
  { kind: "link", re: /\bhttps?:\/\/[^\s<>"'`]+/g },
  { kind: "strong", re: /\*\*(?=\S)([^*\n]*?\S)\*\*/g },
  { kind: "em", re: /(?<![\w*])\*(?=\S)([^*\n]*?\S)\*(?![\w*])/g },
  { kind: "em", re: /(?<![\w_])_(?=\S)([^_\n]*?\S)_(?![\w_])/g },
  { kind: "del", re: /~~(?=\S)([^~\n]*?\S)~~/g },
  { kind: "mention", re: MENTION },
];

// Characters a link does not end with (the sentence's, not the URL's).
const TRAILING = new Set(".,;:!?)]}'\"");

// Nesting kept shallow: **_~~x~~_** is three levels, more is text.
const DEPTH_MAX = 3;
// Formatted pieces one body gets at most; the rest of it is text (a
// 64 KiB body of one-letter pieces would otherwise be 20,000 elements).
const TOKENS_MAX = 2000;

// The nodes of `body`. `me` (a user name) marks mentions of the reader.
// Returns { nodes, mentions } with the names mentioned, lower-cased.
export function render(body, me = "") {
  const mentions = new Set();
  const nodes = [];
  const budget = { tokens: TOKENS_MAX };
  const parts = body.split(FENCE);
  // Even parts are prose, odd ones code (an unclosed fence runs to the end).
  parts.forEach((part, i) => {
    if (i % 2 === 1) {
      const code = document.createElement("code");
      code.textContent = part.replace(/\n$/, "");
      const pre = document.createElement("pre");
      pre.append(code);
      nodes.push(pre);
    } else if (part) {
      nodes.push(...inline(part, me.toLowerCase(), mentions, 0, budget));
    }
  });
  return { nodes, mentions };
}

// The nodes of `text`. Each pattern's next match is kept and looked for
// again only once the position has passed it, so the text is scanned
// about once per pattern, however many pieces it has.
function inline(text, me, mentions, depth, budget) {
  const out = [];
  const next = INLINE.map(() => undefined); // a match, null (none left), or undefined (look)
  let at = 0;
  while (at < text.length) {
    const hit = depth < DEPTH_MAX && budget.tokens > 0 ? earliest(text, at, next) : null;
    if (!hit) break;
    const { kind, match } = hit;
    let whole = match[0];
    if (kind === "link") whole = trimLink(whole);
    if (match.index > at) out.push(document.createTextNode(text.slice(at, match.index)));
    budget.tokens--;
    out.push(element(kind, whole, match[1], me, mentions, depth, budget));
    at = match.index + whole.length;
  }
  if (at < text.length) out.push(document.createTextNode(text.slice(at)));
  return out;
}

function earliest(text, at, next) {
  let best = null;
  INLINE.forEach(({ kind, re }, k) => {
    if (next[k] === undefined || (next[k] && next[k].index < at)) {
      re.lastIndex = at;
      next[k] = re.exec(text);
    }
    const match = next[k];
    if (match && (!best || match.index < best.match.index)) best = { kind, match };
  });
  return best;
}

// A link without the punctuation that ends its sentence (a loop from the
// end: a regex anchored at the end would backtrack over long runs).
function trimLink(url) {
  let end = url.length;
  while (end > 0 && TRAILING.has(url[end - 1])) end--;
  return url.slice(0, end);
}

function element(kind, whole, inner, me, mentions, depth, budget) {
  switch (kind) {
    case "code": {
      const e = document.createElement("code");
      e.textContent = inner;
      return e;
    }
    case "link": {
      const a = document.createElement("a");
      a.href = whole;
      a.textContent = whole;
      a.target = "_blank";
      a.rel = "noopener noreferrer nofollow";
      return a;
    }
    case "mention": {
      const name = inner.toLowerCase();
      mentions.add(name);
      const e = document.createElement("span");
      e.className = name === me ? "mention me" : "mention";
      e.textContent = whole;
      return e;
    }
    default: {
      const e = document.createElement(kind);
      e.append(...inline(inner, me, mentions, depth + 1, budget));
      return e;
    }
  }
}

// Whether `body` mentions `name` outside code (without building nodes).
export function mentions(body, name) {
  const prose = body
    .split(FENCE)
    .filter((_, i) => i % 2 === 0)
    .join("\n")
    .replace(/`[^`\n]+`/g, " ");
  const want = name.toLowerCase();
  // matchAll works on a copy: the shared pattern's lastIndex is untouched.
  for (const m of prose.matchAll(MENTION)) if (m[1].toLowerCase() === want) return true;
  return false;
}
