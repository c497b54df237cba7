#!/usr/bin/env bash
# `../shared/peers/run.sh` with a p99 in its HTTP/2 mode. Same arguments, same output.
#
#   scripts/peers.sh --h2 [--tls] --seconds 10 --ours "target/release/stickyd --config config/bench.toml"
#
# run.sh drives HTTP/2 with h2load, which prints no percentiles. This runs a copy of run.sh (and
# its configs) whose measured h2load run also writes h2load's per-request log (`--log-file`:
# start, status, microseconds to the end of the response) and whose output gets the 99th
# percentile of those times as the `99%` line run.sh reads for wrk. The log is sorted after the
# run, while the balancer is idle, so its CPU figure is unchanged; h2load (on the load CPU)
# spends a little more per request writing it, alike for every balancer. Without --h2 the copy
# behaves exactly as run.sh.
set -euo pipefail
peers="${PEERS_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/shared/peers}"
[ -f "$peers/run.sh" ] || { echo "no run.sh in $peers (set PEERS_DIR)" >&2; exit 2; }
copy=$(mktemp -d /tmp/peers-p99.XXXXXX)
trap 'rm -rf "$copy"' EXIT
cp "$peers"/* "$copy"/
chmod u+w "$copy"/*
python3 - "$copy/run.sh" <<'EOF'
import sys
path = sys.argv[1]
old = 'out=$($load_cpu h2load -c"$conns" -m8 -D"$secs" "${hdr[@]}" "$sch://127.0.0.1:$port/" 2>&1)'
# Failed streams (status -1) are left out; h2load's summary counts them.
p99 = (
    "$(awk -F'\\t' '$2 != -1 {print $3}' \"$work/h2.log\" | sort -n"
    " | awk '{v[NR] = $1} END {if (NR) {i = int(NR * 0.99); if (i < NR * 0.99) i++;"
    " printf \"    99%%  %.2fms\", v[i] / 1000}}')"
)
new = (
    old.replace('-D"$secs"', '-D"$secs" --log-file "$work/h2.log"')
    + '\n    out="$out\n' + p99 + '"; rm -f "$work/h2.log"'
)
text = open(path).read()
if old not in text:
    sys.exit("run.sh changed: its measured h2load line is not found")
open(path, "w").write(text.replace(old, new, 1))
EOF
bash "$copy/run.sh" "$@"
