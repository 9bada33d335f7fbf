#!/usr/bin/env bash
# Issue-13 check (BENCHMARKS.md, "After issue 13"): the build before issue 13 against this one,
# side by side on the same data, in interleaved rounds (bench/paired.py), so the VM's drift
# lands on both sides of each ratio:
#  a. full backup of the bench spool (bench/make-spool.sh) into fresh archive directories;
#  b. no-change daily run, each build on archives it made itself;
#  c. `cat` of the last-written message from a ~5 MB and a ~1 GB archive (as bench/archive.sh);
# and the peak RSS of one full backup each.
#   usage: OLD=/path/to/old/mailpack bench/trust.sh   (default: a worktree of 949c490, built)
set -euo pipefail
cd "$(dirname "$0")/.."
old=${OLD:-/work/old-mailpack/target/release/mailpack}
[ -x "$old" ] || { echo "build the old version first: git worktree add /work/old-mailpack 949c490 && cd /work/old-mailpack && cargo build --release" >&2; exit 2; }
w=$PWD/bench/work
[ -d "$w/spool" ] || { echo "run bench/make-spool.sh first" >&2; exit 2; }
command -v vmtouch >/dev/null || { apt-get update -qq && apt-get install -y -qq vmtouch >/dev/null; }
cargo build --release --quiet
new=$PWD/target/release/mailpack
t=$w/trust
mkdir -p "$t"
echo "== old $old; new $new ($(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo ', with uncommitted changes in src'))"
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB"

# A copy of the spool that nothing else changes (backup.sh's copy gets 1% new mail).
s=$w/trust-spool
[ -d "$s" ] || cp -a "$w/spool" "$s"
conf=$s/etc/imapd.conf
# This VM pages out file cache left idle for a few seconds, and the spool has too many files to
# pin with vmtouch -l (one mapping each), so every command is preceded by an untimed read of
# what it reads.
warm="vmtouch -q -t '$s'"

echo "== a. full backup, all users (interleaved rounds)"
python3 bench/paired.py 3 "$t/full.json" --prepare "rm -rf '$t/full-old' '$t/full-new'; $warm" \
  "old=$old backup --config '$conf' --archive-dir '$t/full-old'" \
  "new=$new backup --config '$conf' --archive-dir '$t/full-new'"

# One full backup each, measured for memory, makes the archives of the no-change runs.
for v in old new; do
  bin=$old; [ $v = new ] && bin=$new
  rm -rf "$t/n-$v"; eval "$warm"
  /usr/bin/time -f "$v full backup: max RSS %M KiB, %e s" "$bin" backup --config "$conf" --archive-dir "$t/n-$v" > /dev/null
  echo "$v archives: $(cat "$t/n-$v"/*.tar.gz | wc -c) bytes + indexes $(cat "$t/n-$v"/*.idx | wc -c) bytes"
done

echo "== b. no-change daily run (interleaved rounds)"
python3 bench/paired.py 7 "$t/nochange.json" --prepare "$warm; vmtouch -q -t '$t/n-old' '$t/n-new'" \
  "old=$old backup --config '$conf' --archive-dir '$t/n-old'" \
  "new=$new backup --config '$conf' --archive-dir '$t/n-new'"

echo "== c. cat of one entry: ~5 MB archive and ~1 GB archive (interleaved rounds)"
# The same archives as bench/archive.sh (made with the build at hand if missing).
if [ ! -f "$w/big/bench.tar.gz" ]; then
  [ -d "$w/mail-big" ] || python3 bench/make-mail.py "$w/mail-big" 50000 2
  mkdir -p "$w/big" && "$new" put --archive-dir "$w/big" --user bench "$w/mail-big" > /dev/null
fi
if [ ! -f "$w/small/bench.tar.gz" ]; then
  [ -d "$w/mail-10m" ] || python3 bench/make-mail.py "$w/mail-10m" 600 5
  mkdir -p "$w/small" && "$new" put --archive-dir "$w/small" --user bench "$w/mail-10m" > /dev/null
fi
for size in small big; do
  echo "$size: $(stat -c %s "$w/$size/bench.tar.gz") bytes, index $(stat -c %s "$w/$size/bench.idx") bytes"
done
# The last-written text message of each archive: the worst case for a scanning reader.
pick() { "$new" ls --all --json "$1" | python3 -c 'import json,sys
runs=[json.loads(l) for l in sys.stdin]
es=[e for r in runs for e in r["data"]["entries"] if e["size"] < 30000]
print(es[-1]["name"])'; }
small_e=$(pick "$w/small/bench.tar.gz"); big_e=$(pick "$w/big/bench.tar.gz")
python3 bench/paired.py 20 "$t/cat.json" --prepare "vmtouch -q -t '$w/small' '$w/big'" \
  "old, 5 MB=$old cat '$w/small/bench.tar.gz' $small_e" \
  "new, 5 MB=$new cat '$w/small/bench.tar.gz' $small_e" \
  "old, 1 GB=$old cat '$w/big/bench.tar.gz' $big_e" \
  "new, 1 GB=$new cat '$w/big/bench.tar.gz' $big_e"
# paired.py gives every ratio against the first command; the 1 GB pair is compared here.
python3 - "$t/cat.json" <<'PY'
import json, statistics, sys
r = {x["name"]: x["times"] for x in json.load(open(sys.argv[1]))["results"]}
q = [n / o for n, o in zip(r["new, 1 GB"], r["old, 1 GB"])]
print(f"new/old, 1 GB: median {statistics.median(q):.2f}x ({min(q):.2f} .. {max(q):.2f})")
PY
