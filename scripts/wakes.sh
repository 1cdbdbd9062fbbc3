#!/usr/bin/env bash
# Wake-ups of an echo server's threads, by cause (BENCHMARKS.md, "Where the context switches
# come from"). For each server named (as `cport bench echo --servers` takes them), runs it at
# 30,000 msgs/s (1000 x 1 KiB) and records `sched:sched_waking` with kernel stacks over 2 s
# (60,000 messages), then buckets every wake-up of a server thread by the waker's stack.
# Needs perf (software tracepoints), python3, and the release build:
#   cargo build --release --workspace --bins --examples
#   scripts/wakes.sh cport-epoll cport-uring tokio
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for server in "$@"; do
  case $server in
    *@leader)
      echo "wakes.sh: $server: the one-poller wait design (@leader) was removed; see ARCHITECTURE.md" >&2
      exit 2
      ;;
    tokio | compio | raw) pattern="peer_$server" ;;
    port-*) pattern="examples/echo" ;;
    *) pattern="cport echo" ;;
  esac
  RUST_LOG=warn ./target/release/cport bench echo --conns 1000 --size 1024 --duration-s 6 \
    --warmup-s 1 --rounds 1 --rate 30000 --servers "$server" >"$tmp/bench.log" 2>&1 &
  bench=$!
  sleep 4
  pid=$(pgrep -n -f "$pattern")
  ls "/proc/$pid/task" >"$tmp/tids"
  perf record -a -e sched:sched_waking -g -o "$tmp/perf.data" -- sleep 2 >/dev/null 2>&1
  wait "$bench"
  perf script -i "$tmp/perf.data" 2>/dev/null >"$tmp/perf.txt"
  echo "=== $server"
  python3 scripts/wakes.py "$tmp/perf.txt" "$tmp/tids" 60000
  grep -E "^$server " "$tmp/bench.log" | tail -1
done
