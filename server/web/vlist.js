// A virtualized list of rows of varying height: only the rows in (or
// near) the viewport are in the DOM, whatever the number of items.
//
// Items are addressed by index 0..count-1 and identified by a key (so a
// row survives items being prepended). Heights are measured once a row is
// rendered; unmeasured rows count as `estimate` pixels. Invariant: the
// canvas is as tall as the sum of the heights, each rendered row sits at
// its prefix-sum offset, and a change above the viewport (older items
// prepended, a row measured taller) moves the scroll position by the same
// amount, so what the reader looks at does not jump. A list scrolled to
// the bottom stays at the bottom as items are appended.

export class VirtualList {
  // opts: key(i) -> string|number, render(i) -> HTMLElement,
  // estimate (px), overscan (rows), onTop() when the first rows come into
  // view, onBottom(atBottom) when reaching or leaving the bottom.
  constructor(scroller, opts) {
    this.scroller = scroller;
    this.opts = { estimate: 44, overscan: 6, ...opts };
    this.canvas = document.createElement("div");
    this.canvas.className = "vlist-canvas";
    scroller.replaceChildren(this.canvas);
    this.count = 0;
    this.heights = [];
    this.offsets = [0];
    this.dirty = false;
    this.rows = new Map(); // key -> {el, index}
    this.stale = new Set(); // keys to render again
    this.stick = true; // keep the bottom in view
    this.frame = 0;
    scroller.addEventListener("scroll", () => this.onScroll(), { passive: true });
    this.width = 0;
    // A new width rewraps text: every rendered row is measured again.
    new ResizeObserver(() => {
      if (scroller.clientWidth !== this.width) {
        this.width = scroller.clientWidth;
        for (const k of this.rows.keys()) this.stale.add(k);
      }
      this.schedule();
    }).observe(scroller);
  }

  // Replaces the whole list.
  reset(count) {
    this.count = count;
    this.heights = new Array(count).fill(this.opts.estimate);
    this.dirty = true;
    for (const { el } of this.rows.values()) el.remove();
    this.rows.clear();
    this.stick = true;
    this.schedule();
  }

  // `added` items were prepended (older history); the view stays on what
  // it showed.
  prepend(added) {
    if (added <= 0) return;
    const anchor = this.anchor();
    this.heights = new Array(added).fill(this.opts.estimate).concat(this.heights);
    this.count += added;
    for (const r of this.rows.values()) r.index += added;
    this.dirty = true;
    if (anchor) anchor.index += added;
    this.layout(anchor);
  }

  // Items were appended at the end (or the count shrank there). Drawn on
  // the next frame even when the count is the same: keys may have moved.
  resize(count) {
    if (count > this.count) {
      for (let i = this.count; i < count; i++) this.heights.push(this.opts.estimate);
    } else {
      this.heights.length = count;
    }
    this.count = count;
    this.dirty = true;
    this.schedule();
  }

  // The item with this key changed: render its row again.
  refresh(key) {
    if (this.rows.has(key)) {
      this.stale.add(key);
      this.schedule();
    }
  }

  // Shows item `index` at the top of the viewport (`margin` px below it).
  scrollToIndex(index, margin = 8) {
    if (index < 0 || index >= this.count) return;
    this.stick = false;
    this.layout({ index, delta: -margin });
  }

  scrollToBottom() {
    this.stick = true;
    this.schedule();
  }

  atBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 4;
  }

  // Rows currently in the DOM.
  rendered() {
    return this.rows.size;
  }

  onScroll() {
    // Scrolls the list makes itself land at the bottom when it sticks, so
    // this reads the reader's intent either way (Chrome merges all the
    // scrolls of a frame into one event).
    this.stick = this.atBottom();
    this.opts.onBottom?.(this.stick);
    this.schedule();
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.layout(this.stick ? null : this.anchor());
    });
  }

  offsetsNow() {
    if (this.dirty) {
      const o = new Array(this.count + 1);
      o[0] = 0;
      for (let i = 0; i < this.count; i++) o[i + 1] = o[i] + this.heights[i];
      this.offsets = o;
      this.dirty = false;
    }
    return this.offsets;
  }

  // The first item at or below `y` (binary search over the offsets).
  indexAt(y) {
    const o = this.offsetsNow();
    let lo = 0;
    let hi = this.count;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (o[mid + 1] <= y) lo = mid + 1;
      else hi = mid;
    }
    return Math.min(lo, Math.max(this.count - 1, 0));
  }

  // The first visible item and how far the viewport's top is below it.
  anchor() {
    if (this.count === 0) return null;
    const top = this.scroller.scrollTop;
    const index = this.indexAt(top);
    return { index, delta: top - this.offsetsNow()[index] };
  }

  setScrollTop(y) {
    const s = this.scroller;
    const target = Math.max(0, Math.round(y));
    if (Math.abs(s.scrollTop - target) >= 1) s.scrollTop = target;
  }

  restore(anchor) {
    if (this.stick || !anchor) {
      this.setScrollTop(this.offsetsNow()[this.count] - this.scroller.clientHeight);
    } else {
      this.setScrollTop(this.offsetsNow()[anchor.index] + anchor.delta);
    }
  }

  // Places the rows for the current scroll position, measures them and
  // places them again if a height changed (at most a few rounds: each
  // round only measures rows that were not measured before).
  layout(anchor) {
    for (let round = 0; round < 3; round++) {
      this.canvas.style.height = this.offsetsNow()[this.count] + "px";
      this.restore(anchor);
      if (!this.place()) break;
    }
    this.canvas.style.height = this.offsetsNow()[this.count] + "px";
    this.restore(anchor);
    const first = this.rows.size ? Math.min(...[...this.rows.values()].map((r) => r.index)) : 0;
    if (this.count > 0 && first <= this.opts.overscan) this.opts.onTop?.();
  }

  // Renders the rows the viewport needs; true if a measured height changed.
  place() {
    const s = this.scroller;
    const { overscan, key, render } = this.opts;
    if (this.count === 0) {
      for (const { el } of this.rows.values()) el.remove();
      this.rows.clear();
      return false;
    }
    const start = Math.max(0, this.indexAt(s.scrollTop) - overscan);
    const end = Math.min(this.count, this.indexAt(s.scrollTop + s.clientHeight) + 1 + overscan);
    const wanted = new Map();
    for (let i = start; i < end; i++) wanted.set(key(i), i);
    for (const [k, r] of this.rows) {
      if (!wanted.has(k)) {
        r.el.remove();
        this.rows.delete(k);
      }
    }
    const o = this.offsetsNow();
    const fresh = [];
    // Rows in index order in the DOM too (reading order for assistive
    // technology and Tab): each new row goes before the next rendered one.
    let next = null;
    for (const [k, i] of [...wanted].reverse()) {
      let r = this.rows.get(k);
      if (!r || this.stale.has(k)) {
        const el = render(i);
        el.classList.add("vlist-row");
        if (r) {
          // A row drawn again keeps the keyboard's place: the focus goes to
          // the new row (or its control of the same name).
          const focused = r.el.contains(document.activeElement) ? document.activeElement : null;
          r.el.replaceWith(el);
          if (focused) refocus(el, r.el, focused);
        } else this.canvas.insertBefore(el, next);
        r = { el, index: i };
        this.rows.set(k, r);
        fresh.push(r);
      } else if (r.index !== i) {
        // Moved (an item came before it): its height slot is new.
        fresh.push(r);
      }
      r.index = i;
      r.el.style.transform = `translateY(${o[i]}px)`;
      next = r.el;
    }
    this.stale.clear();
    let changed = false;
    for (const r of fresh) {
      const h = r.el.offsetHeight;
      if (h > 0 && h !== this.heights[r.index]) {
        this.heights[r.index] = h;
        changed = true;
      }
    }
    if (changed) this.dirty = true;
    return changed;
  }
}

// Moves the focus from `focused` (in the replaced row `was`) to the same
// place in `now`: the control with the same accessible name, else the row.
function refocus(now, was, focused) {
  const label = focused !== was && (focused.getAttribute("aria-label") || focused.textContent);
  const twin = label && [...now.querySelectorAll("button, a, [tabindex]")].find(
    (e) => (e.getAttribute("aria-label") || e.textContent) === label,
  );
  const target = twin || now;
  if (target.tabIndex < 0 && twin) target.tabIndex = 0;
  target.focus({ preventScroll: true });
}
