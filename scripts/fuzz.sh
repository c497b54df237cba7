#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS_PER_TARGET (default 60), one after another,
# and prints per target: runs executed, corpus size, crashes.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (targets: token cookie xff config h1_request)
#
# Needs the nightly toolchain (cargo-fuzz builds with -Zsanitizer=address); installs cargo-fuzz
# if missing. Seeds are read from fuzz/corpus/<target>/ (committed, left untouched); what the
# fuzzer finds goes to fuzz/work/corpus/<target>/ (ignored by git) and is reused by the next run.
# A crash is saved by libFuzzer under fuzz/artifacts/<target>/: fix it, then copy the input to
# fuzz/regressions/<target>/ so that `cargo test --test fuzz_regressions` replays it on stable.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
secs=${1:-60}
targets=(token cookie xff config h1_request)
if (($# > 1)); then targets=("${@:2}"); fi
# Sanitizer builds are heavy; the machines here are small and shared.
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz.sh: the nightly toolchain is required (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

# -a: debug assertions and overflow checks on, so debug_assert! and arithmetic overflow count.
flags=(-O -a)
(cd fuzz && cargo +nightly fuzz build "${flags[@]}")

summary=()
failed=0
for t in "${targets[@]}"; do
  work=$root/fuzz/work/corpus/$t
  artifacts=$root/fuzz/artifacts/$t
  logs=$root/fuzz/work/logs
  mkdir -p "$work" "$artifacts" "$logs"
  log=$logs/$t.log
  crashes_before=$(find "$artifacts" -type f | wc -l)
  dict=()
  if [[ -f $root/fuzz/dict/$t.dict ]]; then dict=(-dict="$root/fuzz/dict/$t.dict"); fi
  echo "== $t: ${secs}s (log: $log)"
  set +e
  (cd fuzz && cargo +nightly fuzz run "${flags[@]}" "$t" "$work" "$root/fuzz/corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -print_final_stats=1 "${dict[@]}") >"$log" 2>&1
  rc=$?
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  corp=$(grep -o 'corp: [0-9]*/[0-9]*[bKMG]*' "$log" | tail -1 | sed 's/corp: //')
  crashes=$(($(find "$artifacts" -type f | wc -l) - crashes_before))
  if ((rc != 0)); then
    failed=1
    tail -40 "$log" >&2
  fi
  line=$(printf '%-7s runs=%-10s seconds=%-5s corpus=%-12s crashes=%s exit=%s' \
    "$t" "${runs:-?}" "${took:-?}" "${corp:-?}" "$crashes" "$rc")
  echo "$line"
  summary+=("$line")
done

echo
echo "fuzz summary (${secs}s per target; corpus = entries/bytes as libFuzzer counts them):"
printf '%s\n' "${summary[@]}"
exit "$failed"
