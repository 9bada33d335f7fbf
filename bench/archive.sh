#!/usr/bin/env bash
# Issue-2 benchmarks (BENCHMARKS.md, "Archive"): append throughput of `mailpack put` against
# `tar cf - | gzip -6` and `tar cf - | pigz` on the same files, and `mailpack cat` of one entry
# from a ~10 MB and a ~1 GB archive. Installs pigz and hyperfine if missing. Work files go to
# bench/work (about 5 GB at the default sizes).
#   usage: bench/archive.sh [MESSAGES_FOR_THROUGHPUT] [MESSAGES_FOR_1GB]
set -euo pipefail
cd "$(dirname "$0")/.."
n_put=${1:-20000}
n_big=${2:-50000}
need=()
for t in pigz hyperfine; do command -v $t >/dev/null || need+=($t); done
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; fi
cargo build --release --quiet
mp=$PWD/target/release/mailpack
w=$PWD/bench/work
mkdir -p "$w"
cores=$(nproc)

echo "== machine"
echo "cores: $cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
echo "$(gzip --version | head -1); pigz $(pigz --version 2>&1 | awk '{print $2}'); $(tar --version | head -1); $(hyperfine --version)"
echo "mailpack $($mp --version | awk '{print $2}') (flate2 with zlib-rs, level 6)"

[ -d "$w/mail" ] || python3 bench/make-mail.py "$w/mail" "$n_put" 1
bytes=$(du -sb "$w/mail" | cut -f1)
files=$(find "$w/mail" -type f | wc -l)
echo "== append throughput: $files files, $bytes bytes (page cache warm)"
cat $(find "$w/mail" -type f) > /dev/null
# --prepare pairs with the commands in order: fresh archive directories for mailpack.
hyperfine --warmup 1 --runs 3 --export-json "$w/put.json" \
  --prepare true --prepare true \
  --prepare "rm -rf '$w/a'; mkdir -p '$w/a'" --prepare "rm -rf '$w/a1'; mkdir -p '$w/a1'" \
  -n "tar|gzip -6" "tar cf - -C '$w' mail | gzip -6 > '$w/t.tar.gz'" \
  -n "tar|pigz -p $cores" "tar cf - -C '$w' mail | pigz -6 -p $cores > '$w/p.tar.gz'" \
  -n "mailpack put --jobs $cores" "$mp put --archive-dir '$w/a' --user bench --jobs $cores '$w/mail' > /dev/null" \
  -n "mailpack put --jobs 1" "$mp put --archive-dir '$w/a1' --user bench --jobs 1 '$w/mail' > /dev/null"
echo "sizes: gzip -6 $(stat -c %s "$w/t.tar.gz")  pigz $(stat -c %s "$w/p.tar.gz")  mailpack $(stat -c %s "$w/a/bench.tar.gz") (+ index $(stat -c %s "$w/a/bench.idx"))"
python3 - "$w/put.json" <<'PY'
import json, sys
r = {x["command"]: x["median"] for x in json.load(open(sys.argv[1]))["results"]}
mp = [v for k, v in r.items() if k.startswith("mailpack put --jobs") and not k.endswith(" 1")][0]
for k, v in r.items():
    print(f"{k:28s} median {v:7.2f} s   speed vs mailpack: mailpack is {v / mp:5.2f}x faster" if not k.startswith("mailpack") else f"{k:28s} median {v:7.2f} s")
PY

echo "== cat of one entry: ~10 MB archive vs ~1 GB archive"
if [ ! -f "$w/big/bench.tar.gz" ]; then
  [ -d "$w/mail-big" ] || python3 bench/make-mail.py "$w/mail-big" "$n_big" 2
  mkdir -p "$w/big" && "$mp" put --archive-dir "$w/big" --user bench "$w/mail-big" > /dev/null
fi
if [ ! -f "$w/small/bench.tar.gz" ]; then
  [ -d "$w/mail-10m" ] || python3 bench/make-mail.py "$w/mail-10m" 600 5
  mkdir -p "$w/small" && "$mp" put --archive-dir "$w/small" --user bench "$w/mail-10m" > /dev/null
fi
for size in small big; do
  a="$w/$size/bench.tar.gz"
  echo "$size: $(stat -c %s "$a") bytes, $("$mp" ls "$a" | wc -l) entries, index $(stat -c %s "$w/$size/bench.idx") bytes"
done
# The last-written text message of each archive: the worst case for a scanning reader.
pick() { "$mp" ls --all --json "$1" | python3 -c 'import json,sys
runs=[json.loads(l) for l in sys.stdin]
es=[e for r in runs for e in r["data"]["entries"] if e["size"] < 30000]
print(es[-1]["name"])'; }
small_e=$(pick "$w/small/bench.tar.gz"); big_e=$(pick "$w/big/bench.tar.gz")
hyperfine --warmup 3 --runs 30 --export-json "$w/cat.json" \
  -n "mailpack cat, 10 MB archive" "$mp cat '$w/small/bench.tar.gz' $small_e > /dev/null" \
  -n "mailpack cat, 1 GB archive" "$mp cat '$w/big/bench.tar.gz' $big_e > /dev/null"
hyperfine --runs 3 \
  -n "tar -xzOf (scans), 10 MB archive" "tar -xzOf '$w/small/bench.tar.gz' $small_e > /dev/null" \
  -n "tar -xzOf (scans), 1 GB archive" "tar -xzOf '$w/big/bench.tar.gz' $big_e > /dev/null"
