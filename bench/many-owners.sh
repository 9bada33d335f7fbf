#!/usr/bin/env bash
# Issue-19 benchmark (BENCHMARKS.md, "Many owners"): a no-change run of 20,000 users (3 mailboxes
# each) against one of 20 users of the same shape, per user, and against restic's no-change
# backup of the same spool. Spools are made by a real Cyrus (bench_spool::make_many_owners_spool)
# and kept in bench/work/many; then copied, so Cyrus's files are untouched by the runs.
#   usage: bench/many-owners.sh [USERS]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20000}
for t in restic hyperfine; do command -v $t >/dev/null || { apt-get update -qq && apt-get install -y -qq $t >/dev/null; }; done
scripts/setup
cargo build --release --quiet
mp=$PWD/target/release/mailpack
w=$PWD/bench/work/many
mkdir -p "$w"
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(restic version | head -1); $(hyperfine --version)"

for users in 20 "$n"; do
  if [ ! -d "$w/spool-$users" ]; then
    MAILPACK_BENCH_SPOOL="$w/spool-$users" MAILPACK_BENCH_USERS=$users \
      cargo test --release --test it bench_spool::make_many_owners_spool -- --ignored --nocapture
  fi
  s="$w/s-$users"
  rm -rf "$s" "$w/A-$users" "$w/restic-$users" && cp -a "$w/spool-$users" "$s"
  conf=$s/etc/imapd.conf
  find "$s" -type f -exec cat {} + > /dev/null
  echo "== $users users: $(find "$s/spool" -name cyrus.index | wc -l) mailboxes"
  /usr/bin/time -f "first backup: %e s, max RSS %M KiB" "$mp" backup --config "$conf" --archive-dir "$w/A-$users" > /dev/null
  export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$w/restic-$users
  restic init --quiet
  restic backup --quiet "$s/spool" "$s/conf" "$s/sieve"
  hyperfine --warmup 1 --runs 5 --export-json "$w/nochange-$users.json" \
    -n "mailpack backup" "$mp backup --config '$conf' --archive-dir '$w/A-$users' > /dev/null" \
    -n "restic backup (2nd run)" "restic backup --quiet '$s/spool' '$s/conf' '$s/sieve'"
  /usr/bin/time -f "mailpack no-change: %e s, max RSS %M KiB" "$mp" backup --config "$conf" --archive-dir "$w/A-$users" > /dev/null
  # Where the time goes: system calls of one no-change run, by count and time.
  strace -f -c -o "$w/strace-$users.txt" "$mp" backup --config "$conf" --archive-dir "$w/A-$users" > /dev/null || true
  head -25 "$w/strace-$users.txt"
done

python3 - "$w" 20 "$n" <<'PY'
import json, sys
w, small, big = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for users in (small, big):
    r = {x["command"]: x["median"] for x in json.load(open(f"{w}/nochange-{users}.json"))["results"]}
    mp, rs = r["mailpack backup"], r["restic backup (2nd run)"]
    print(f"{users:6d} users: mailpack {mp:8.3f} s = {mp / users * 1000:6.3f} ms/user; "
          f"restic {rs:8.3f} s; mailpack {rs / mp:6.1f}x faster")
PY
