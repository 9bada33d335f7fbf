#!/usr/bin/env bash
# Issue-18 benchmark (BENCHMARKS.md, "Find"): `mailpack find` on a 50,000-message archive of a
# real Cyrus backup, the first search (which builds the find index) and the next ones, side by
# side with what an admin does without it: `tar -xzOf` of the archive piped to grep. Builds the
# one-user spool with a real Cyrus (bench/make-spool.sh's generator, as bench/restore.sh does)
# and backs it up once; work files go to bench/work/find (about 2 GB).
#   usage: bench/find.sh [MESSAGES]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-50000}
command -v hyperfine >/dev/null || { apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null; }
scripts/setup
cargo build --release --quiet
mp=$PWD/target/release/mailpack
w=$PWD/bench/work/find
mkdir -p "$w"

echo "== machine"
echo "cores: $(nproc); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "$(tar --version | head -1); $(grep --version | head -1); $(hyperfine --version)"

a="$w/a-$n"
if [ ! -f "$a/user000.tar.gz" ]; then
  [ -d "$w/mail-$n" ] || python3 bench/make-mail.py "$w/mail-$n" "$n" 7
  [ -d "$w/spool-$n" ] || MAILPACK_BENCH_SPOOL="$w/spool-$n" MAILPACK_BENCH_MAIL="$w/mail-$n" \
    MAILPACK_BENCH_USERS=1 MAILPACK_BENCH_FIXED=1000 \
    cargo test --release --test it bench_spool::make_bench_spool -- --ignored --nocapture
  rm -rf "$a"
  "$mp" backup --config "$w/spool-$n/etc/imapd.conf" --archive-dir "$a" > /dev/null
fi
archive="$a/user000.tar.gz"
echo "archive: $(stat -c %s "$archive") bytes, $("$mp" ls --archive-dir "$a" --user user000 | grep -c ' files/') message files"

# A sender who wrote about 1 in 500 of the messages (bench/make-mail.py).
who="user123@example.org"
find_cmd="$mp find --archive-dir '$a' --user user000 --from '$who'"
grep_cmd="tar -xzOf '$archive' --wildcards 'files/*' 2>/dev/null | grep -a -i -c '^From:.*$who'"
echo "== result sizes"
echo "mailpack find: $(eval "$find_cmd" 2>/dev/null | wc -l) messages (each with mailboxes, UIDs, runs, flags)"
echo "tar | grep:    $(eval "$grep_cmd") matching From: lines (no mailbox, UID, run or SHA-1)"

echo "== first search (builds the find index), next searches, tar | grep"
cat "$archive" > /dev/null
hyperfine --warmup 1 --runs 5 --export-json "$w/find.json" \
  --prepare "rm -f '$a/user000.find'" -n "find, first (index built)" "$find_cmd > /dev/null 2>&1" \
  -n "tar -xzOf | grep" "$grep_cmd > /dev/null"
hyperfine --warmup 2 --runs 20 --export-json "$w/find-next.json" \
  -n "find, next (index current)" "$find_cmd > /dev/null 2>&1" \
  -n "find --subject, next" "$mp find --archive-dir '$a' --user user000 --subject 'quarterly report' > /dev/null 2>&1" \
  -n "find --mailbox Fixed --subject, next" "$mp find --archive-dir '$a' --user user000 --mailbox Fixed --subject invoice > /dev/null 2>&1"
echo "find index: $(stat -c %s "$a/user000.find") bytes"

echo "== peak memory"
rm -f "$a/user000.find"
/usr/bin/time -f "find, first: %M KiB peak RSS, %e s" sh -c "$find_cmd > /dev/null 2>&1"
/usr/bin/time -f "find, next: %M KiB peak RSS, %e s" sh -c "$find_cmd > /dev/null 2>&1"

python3 - "$w/find.json" "$w/find-next.json" <<'PY'
import json, sys
r = {}
for f in sys.argv[1:]:
    r.update({x["command"]: x["median"] for x in json.load(open(f))["results"]})
first, nxt, grep = r["find, first (index built)"], r["find, next (index current)"], r["tar -xzOf | grep"]
print(f"first search {first:.2f} s = {grep / first:.2f}x tar|grep ({grep:.2f} s); "
      f"next search {nxt * 1000:.0f} ms = {grep / nxt:.0f}x faster than tar|grep")
PY
