#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: repeatable where wall-clock
# benchmarks on a shared machine are not (the same binary and load give the same count within
# about 0.5%, whatever else the machine does).
#
#   scripts/instructions.sh [--h2] [BINARY...]        (default: target/release/stickyd)
#
# For each binary and each mode (pinned: every request carries the affinity cookie; fresh: none,
# so every response issues one) it runs stickyd under callgrind with config/bench.toml (one
# worker on 127.0.0.1:18083) in front of the four nginx origins of ../shared/peers (started
# here on 127.0.0.1:19001-19004), sends 4,000 and then 24,000 requests with
# `h2load --h1 -c 8` (with --h2: h2c, `h2load -c 8 -m 8`), and prints (I(24,000) - I(4,000)) /
# 20,000: start-up and shutdown cancel.
# Needs valgrind, nginx and h2load (nghttp2-client); run on a quiet machine, nothing compiling.
set -euo pipefail
cd "$(dirname "$0")/.."
proto=(--h1)
if [ "${1:-}" = --h2 ]; then proto=(-m 8); shift; fi
bins=("$@")
((${#bins[@]})) || bins=(target/release/stickyd)
origins=../shared/peers/backends-nginx.conf
[ -f "$origins" ] || { echo "missing $origins" >&2; exit 2; }
for t in valgrind nginx h2load curl; do
  command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 2; }
done
work=$(mktemp -d /tmp/stickyd-instructions.XXXXXX)
nginx -p /tmp -c "$(realpath "$origins")" -g 'daemon off;' &
origins_pid=$!
trap 'kill $origins_pid 2>/dev/null; rm -rf "$work"' EXIT

# Instructions of one run of N requests.
count() {
  local bin=$1 n=$2 mode=$3 out="$work/cg.out"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --config config/bench.toml \
    2>"$work/stderr" &
  local pid=$!
  for _ in $(seq 1 300); do curl -s -o /dev/null http://127.0.0.1:18083/ && break; sleep 0.2; done
  local hdr=()
  if [ "$mode" = pinned ]; then
    local c
    c=$(curl -s -D - -o /dev/null http://127.0.0.1:18083/ | tr -d '\r' |
      sed -n 's/^[Ss]et-[Cc]ookie: \([^;]*\).*/\1/p')
    hdr=(-H "cookie: $c")
  fi
  h2load "${proto[@]}" -n "$n" -c 8 "${hdr[@]}" http://127.0.0.1:18083/ |
    grep -q "$n succeeded" || { echo "h2load: not every request succeeded" >&2; exit 1; }
  kill -TERM "$pid"
  wait "$pid" || true
  sed -n 's/^summary: //p' "$out"
}

for bin in "${bins[@]}"; do
  for mode in pinned fresh; do
    small=$(count "$bin" 4000 "$mode")
    large=$(count "$bin" 24000 "$mode")
    echo "$bin $mode: $(((large - small) / 20000)) instructions per request"
  done
done
