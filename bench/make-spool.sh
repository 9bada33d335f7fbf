#!/usr/bin/env bash
# Builds the benchmark spool (BENCHMARKS.md): a real Cyrus 3.6 populated over IMAP and LMTP with
# mail-shaped messages from bench/make-mail.py, then stopped and copied to bench/work/spool.
#   usage: bench/make-spool.sh [MESSAGES] [USERS]      (default 100000 messages, 100 users)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100000}
users=${2:-100}
scripts/setup
w=$PWD/bench/work
mkdir -p "$w"
[ -d "$w/spool-mail-$n" ] || python3 bench/make-mail.py "$w/spool-mail-$n" "$n" 7
MAILPACK_BENCH_SPOOL="$w/spool" MAILPACK_BENCH_MAIL="$w/spool-mail-$n" MAILPACK_BENCH_USERS="$users" \
  cargo test --release --test it bench_spool::make_bench_spool -- --ignored --nocapture
du -sh "$w/spool"
