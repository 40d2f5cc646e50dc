#!/usr/bin/env bash
# Scrapes /metrics of a real server after traffic on several routes (HTTP
# and WebSocket handshakes included) and runs `promtool check metrics` on
# it: any finding fails. Usage: tools/metrics/check.sh target/debug/rookery
set -euo pipefail
bin=$1
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
"$bin" --listen "127.0.0.1:$port" --data-dir "$dir/data" --durability none 2>"$dir/log" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
url="http://127.0.0.1:$port"
for _ in $(seq 100); do
    curl -fs "$url/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
json() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }
token=$(curl -fs -X POST -d '{"name":"metrics","password":"pw-secret"}' "$url/api/register" | json token)
auth="Authorization: Bearer $token"
room=$(curl -fs -X POST -H "$auth" -d '{"name":"metrics"}' "$url/api/rooms" | json id)
for i in 1 2 3; do
    curl -fs -o /dev/null -X POST -H "$auth" -d "{\"body\":\"m$i\"}" "$url/api/rooms/$room/messages"
done
curl -fs -o /dev/null -H "$auth" "$url/api/rooms/$room/messages"
curl -fs -o /dev/null -H "$auth" "$url/api/rooms"
curl -fs -o /dev/null -H "$auth" "$url/api/me"
curl -s -o /dev/null "$url/nowhere"
curl -s -o /dev/null "$url/ws"
curl -fs "$url/metrics" >"$dir/metrics.txt"
promtool check metrics <"$dir/metrics.txt"
echo "promtool check metrics: ok ($(grep -c '^# TYPE' "$dir/metrics.txt") families)"
