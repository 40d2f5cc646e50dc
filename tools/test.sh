#!/usr/bin/env bash
# The one command that runs every test of Rookery:
#   format check, clippy (warnings denied), every crate's tests (unit,
#   property, model, crash and CLI tests), and a short smoke run of
#   `rookery-bench storage`.
# It installs what a fresh machine lacks (rustfmt, clippy), idempotently.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
if ! command -v cargo >/dev/null; then
    echo "cargo is required (https://rustup.rs)" >&2
    exit 2
fi
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "$component"
    fi
done
cargo --version

step "format"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
cargo test --workspace --locked

step "bench smoke: rookery-bench storage (a few seconds)"
smoke_dir=$(mktemp -d)
trap 'rm -rf "$smoke_dir"' EXIT
cargo run --locked -q -p rookery-bench -- storage \
    --dir "$smoke_dir/run" --seconds 0.5 --writers 1,16 --rooms 10 \
    --history-queries 50 --recovery 20000 --json "$smoke_dir/report.json"
python3 - "$smoke_dir/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for key in ("appends_per_sec", "history_p99_us", "recovery_ms_per_million"):
    assert r["rookery"][key] is not None and r["rookery"][key] > 0, key
assert r["sqlite"]["appends_per_sec"] > 0 and r["ratio_appends"] > 0
print("bench smoke: report has every field")
PY

step "bench smoke: rookery-bench engine (a few seconds)"
cargo run --locked -q -p rookery-bench -- engine \
    --dir "$smoke_dir/engine" --seconds 0.3 --json "$smoke_dir/engine.json"
python3 - "$smoke_dir/engine.json" <<'PY'
import json, sys
runs = json.load(open(sys.argv[1]))["runs"]
assert {(r["scenario"], r["shards"], r["durability"]) for r in runs} == {
    (s, n, d) for s in ("fanout", "rooms") for n in (1, 2) for d in ("none", "sync")}
for r in runs:
    for key in ("posts_per_sec", "delivered_per_sec", "post_to_deliver_p99_us"):
        assert r[key] > 0, (key, r)
    # Every subscriber got every post made in the run (none were lost).
    assert r["delivered"] == r["posts"] * r["subscribers"] // r["rooms"], r
print("bench smoke: engine report has every field, nothing lost")
PY

printf '\n==> all tests passed\n'

