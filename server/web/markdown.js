// A small, safe subset of Markdown for message bodies, rendered straight
// to DOM nodes (text nodes and a few elements built here): no HTML from a
// message is ever parsed, so a body cannot inject markup or script.
//
// Understood: ``` fenced code blocks ```, `inline code`, **bold**,
// *italic* or _italic_, ~~struck~~, bare http(s) links, and @name
// mentions. Everything else is text, shown as written (line breaks kept
// by the stylesheet's pre-wrap).

// Inline forms, tried at each position; the earliest match wins (ties go
// to the first listed). Code and links take no formatting inside.
const INLINE = [
  { kind: "code", re: /`([^`\n]+)`/ },
  { kind: "link", re: /\bhttps?:\/\/[^\s<>"'`]+/ },
  { kind: "strong", re: /\*\*(?=\S)([^*\n]*?\S)\*\*/ },
  { kind: "em", re: /(?<![\w*])\*(?=\S)([^*\n]*?\S)\*(?![\w*])/ },
  { kind: "em", re: /(?<![\w_])_(?=\S)([^_\n]*?\S)_(?![\w_])/ },
  { kind: "del", re: /~~(?=\S)([^~\n]*?\S)~~/ },
  { kind: "mention", re: /(?<![\w@.])@([A-Za-z0-9_.-]*[A-Za-z0-9_-])/ },
];

// Characters a link does not end with (the sentence's, not the URL's).
const TRAILING = /[.,;:!?)\]}'"]+$/;

// Nesting kept shallow: **_~~x~~_** is three levels, more is text.
const DEPTH_MAX = 3;

// The nodes of `body`. `me` (a user name) marks mentions of the reader.
// Returns { nodes, mentions } with the names mentioned, lower-cased.
export function render(body, me = "") {
  const mentions = new Set();
  const nodes = [];
  const parts = body.split(/^```[^\n]*\n?/m);
  // Even parts are prose, odd ones code (an unclosed fence runs to the end).
  parts.forEach((part, i) => {
    if (i % 2 === 1) {
      const code = document.createElement("code");
      code.textContent = part.replace(/\n$/, "");
      const pre = document.createElement("pre");
      pre.append(code);
      nodes.push(pre);
    } else if (part) {
      nodes.push(...inline(part, me.toLowerCase(), mentions, 0));
    }
  });
  return { nodes, mentions };
}

function inline(text, me, mentions, depth) {
  const out = [];
  let rest = text;
  while (rest) {
    const hit = depth < DEPTH_MAX ? earliest(rest) : null;
    if (!hit) {
      out.push(document.createTextNode(rest));
      break;
    }
    let { kind, match } = hit;
    let whole = match[0];
    if (kind === "link") whole = whole.replace(TRAILING, "");
    if (match.index > 0) out.push(document.createTextNode(rest.slice(0, match.index)));
    out.push(element(kind, whole, match[1], me, mentions, depth));
    rest = rest.slice(match.index + whole.length);
  }
  return out;
}

function earliest(text) {
  let best = null;
  for (const { kind, re } of INLINE) {
    const match = re.exec(text);
    if (match && (!best || match.index < best.match.index)) best = { kind, match };
  }
  return best;
}

function element(kind, whole, inner, me, mentions, depth) {
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
      e.append(...inline(inner, me, mentions, depth + 1));
      return e;
    }
  }
}

// Whether `body` mentions `name` (without building nodes).
export function mentions(body, name) {
  const re = /(?<![\w@.])@([A-Za-z0-9_.-]*[A-Za-z0-9_-])/g;
  const want = name.toLowerCase();
  for (const m of body.matchAll(re)) if (m[1].toLowerCase() === want) return true;
  return false;
}
