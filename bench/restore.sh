#!/usr/bin/env bash
# Issue-6 benchmark (BENCHMARKS.md, "Restore"): restoring one message (by SHA-1) and one
# 1,000-message mailbox from a small and a ~1 GB archive of real Cyrus backups, and a full-user
# restore against `tar -xzf` of the same archive. Builds two one-user spools with a real Cyrus
# (bench/make-spool.sh's generator), backs them up, then times with hyperfine. Work files go to
# bench/work/restore (about 4 GB).
#   usage: bench/restore.sh [MESSAGES_SMALL] [MESSAGES_BIG]
set -euo pipefail
cd "$(dirname "$0")/.."
n_small=${1:-4000}
n_big=${2:-50000}
command -v hyperfine >/dev/null || { apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null; }
scripts/setup
cargo build --release --quiet
mp=$PWD/target/release/mailpack
w=$PWD/bench/work/restore
mkdir -p "$w"

echo "== machine"
echo "cores: $(nproc); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "$(tar --version | head -1); $(hyperfine --version); mailpack $($mp --version | awk '{print $2}')"

for n in "$n_small" "$n_big"; do
  if [ ! -f "$w/a-$n/user000.tar.gz" ]; then
    [ -d "$w/mail-$n" ] || python3 bench/make-mail.py "$w/mail-$n" "$n" 7
    MAILPACK_BENCH_SPOOL="$w/spool-$n" MAILPACK_BENCH_MAIL="$w/mail-$n" MAILPACK_BENCH_USERS=1 \
      MAILPACK_BENCH_FIXED=1000 \
      cargo test --release --test it bench_spool::make_bench_spool -- --ignored --nocapture
    rm -rf "$w/a-$n"
    "$mp" backup --config "$w/spool-$n/etc/imapd.conf" --archive-dir "$w/a-$n" > /dev/null
    rm -rf "$w/spool-$n" "$w/mail-$n"
  fi
  echo "archive of $n messages: $(stat -c %s "$w/a-$n/user000.tar.gz") bytes"
done

sha() { "$mp" ls --archive-dir "$w/a-$1" --user user000 --at "$(date -u +%s)" | awk '/^user.user000.Fixed /{f=1;next} f && /uid 500 /{print $3; exit}'; }
echo "== one message by SHA-1, and the 1,000-message mailbox to one mbox file"
# An mbox is one file: the time is reading the archive, not creating 1,000 files (which on this
# filesystem varies by a factor of two from run to run).
hyperfine --warmup 2 --runs 10 --export-json "$w/small-ops.json" \
  --prepare "rm -rf '$w/out'" \
  -n "sha1, $n_small msgs" "$mp restore --archive-dir '$w/a-$n_small' --user user000 --sha1 $(sha $n_small) --eml '$w/out'" \
  -n "sha1, $n_big msgs" "$mp restore --archive-dir '$w/a-$n_big' --user user000 --sha1 $(sha $n_big) --eml '$w/out'" \
  -n "Fixed, $n_small msgs" "$mp restore --archive-dir '$w/a-$n_small' --user user000 --mailbox Fixed --mbox '$w/out'" \
  -n "Fixed, $n_big msgs" "$mp restore --archive-dir '$w/a-$n_big' --user user000 --mailbox Fixed --mbox '$w/out'"

echo "== full-user restore of the $n_big-message archive"
# GNU tar exits 2 on this archive (-i): it cannot create a tombstone, nor a mailbox's imap/ link
# inside the path of its parent's link; every file is extracted. mailpack makes its export
# durable (one syncfs at the end), so tar is also timed followed by sync.
cat "$w/a-$n_big/user000.tar.gz" > /dev/null
hyperfine -i --warmup 1 --runs 5 --export-json "$w/full.json" \
  --prepare "rm -rf '$w/out'; mkdir -p '$w/out'; sync" \
  -n "mailpack restore --maildir" "$mp restore --archive-dir '$w/a-$n_big' --user user000 --maildir '$w/out/m' > /dev/null" \
  -n "tar -xzf; sync" "tar -xzf '$w/a-$n_big/user000.tar.gz' -C '$w/out' --warning=no-unknown-keyword 2>/dev/null; sync" \
  -n "tar -xzf" "tar -xzf '$w/a-$n_big/user000.tar.gz' -C '$w/out' --warning=no-unknown-keyword 2>/dev/null"
python3 - "$w/full.json" <<'PY'
import json, sys
r = {x["command"]: x["median"] for x in json.load(open(sys.argv[1]))["results"]}
mp = r["mailpack restore --maildir"]
for k in ("tar -xzf; sync", "tar -xzf"):
    print(f"{k} / mailpack: {r[k] / mp:.2f}x (above 1: mailpack is faster)")
PY
rm -rf "$w/out"
