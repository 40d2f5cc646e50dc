#!/usr/bin/env bash
# Runs Autobahn|Testsuite 0.8.2 (`wstest -m fuzzingclient`) against
# `rookery --echo-endpoint` with the message limit raised to 16 MiB, case
# groups 1-7, 9, 10, 12 and 13 (the suite has no 8 or 11), and fails on any
# case whose behaviour is not OK, NON-STRICT or INFORMATIONAL.
#
#   tools/autobahn/run.sh BINARY PYTHON2.7 [REPORT_DIR]
#
# Of the compression groups (12 and 13) it leaves out the cases of 32 KiB
# messages and up (12.*.8-10 and 12.*.13-18, the same in 13): a thousand
# such messages per case made them 11 of a debug build's 13 minutes. The
# smaller cases take the same deflate paths; server/tests/ws_extensions.rs
# sends compressed messages up to the 64 KiB limit. AUTOBAHN_ALL=1 runs
# every case.
#
# The suite is Python 2 only; tools/test.sh calls this when a Python 2.7
# interpreter is on the machine (nothing in apt or pip installs one). The
# suite and its pinned dependencies (requirements.txt) are installed with
# that interpreter's pip into target/autobahn-py2, once.
set -euo pipefail
bin=$1
python2=$2
here=$(cd "$(dirname "$0")" && pwd)
reports=${3:-$(mktemp -d)}
mkdir -p "$reports"
reports=$(cd "$reports" && pwd) # the suite runs from inside it
pkgs="$here/../../target/autobahn-py2"
if ! cmp -s "$here/requirements.txt" "$pkgs/.installed" 2>/dev/null; then
    rm -rf "$pkgs"
    "$python2" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --target "$pkgs" -r "$here/requirements.txt" 2>&1 | grep -v DEPRECATION || true
    cp "$here/requirements.txt" "$pkgs/.installed"
fi
data=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" --listen "127.0.0.1:$port" --data-dir "$data/data" --echo-endpoint \
    --ws-frame-bytes-max 16777216 --conn-output-bytes-max 33554432 \
    >"$reports/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
exclude=""
if [ "${AUTOBAHN_ALL:-0}" != 1 ]; then
    for group in 12 13; do
        for case in 8 9 10 13 14 15 16 17 18; do
            exclude+="${exclude:+, }\"$group.*.$case\""
        done
    done
fi
sed -e "s|@PORT@|$port|" -e "s|@OUTDIR@|$reports|" -e "s|@EXCLUDE@|$exclude|" \
    "$here/fuzzingclient.json" >"$reports/spec.json"
# addsitedir, not PYTHONPATH: zope's namespace package needs its .pth read.
(cd "$reports" && timeout 900 "$python2" -W ignore -c \
    'import site, sys; site.addsitedir(sys.argv.pop(1)); from autobahntestsuite.wstest import run; run()' \
    "$pkgs" -m fuzzingclient -s "$reports/spec.json" >"$reports/wstest.log" 2>&1) ||
    { tail -20 "$reports/wstest.log"; echo "wstest failed" >&2; exit 1; }
python3 - "$reports/index.json" <<'PY'
import json, sys, collections
cases = json.load(open(sys.argv[1]))["rookery"]
passing = {"OK", "NON-STRICT", "INFORMATIONAL"}
tally = collections.Counter(c["behavior"] for c in cases.values())
bad = sorted(
    (k for k, c in cases.items()
     if c["behavior"] not in passing or c["behaviorClose"] not in passing),
    key=lambda k: [int(p) for p in k.split(".")])
print(f"autobahn: {len(cases)} cases: " + ", ".join(f"{n} {b}" for b, n in sorted(tally.items())))
for k in bad:
    c = cases[k]
    print(f"  {k}: {c['behavior']} (close {c['behaviorClose']}, remote code {c.get('remoteCloseCode')})")
sys.exit(1 if bad else 0)
PY
