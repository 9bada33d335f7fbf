#!/usr/bin/env bash
# Issue-5 benchmark (BENCHMARKS.md, "Compaction"): `mailpack compact --force` against
# `gzip -dc | gzip -6` of the same archive, for a mostly-live and a half-dead archive, and the
# compactor's peak memory at two archive sizes. Installs hyperfine if missing. Work files go to
# bench/work (about 6 GB at the default sizes).
#   usage: bench/compact.sh [MESSAGES_SMALL] [MESSAGES_BIG]
set -euo pipefail
cd "$(dirname "$0")/.."
n_small=${1:-25000}
n_big=${2:-50000}
command -v hyperfine >/dev/null || { apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null; }
cargo build --release --quiet
mp=$PWD/target/release/mailpack
w=$PWD/bench/work/compact
mkdir -p "$w"

echo "== machine"
echo "cores: $(nproc); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "$(gzip --version | head -1); $(hyperfine --version); mailpack $($mp --version | awk '{print $2}')"

build() { # size shape
  local n=$1 shape=$2 dir="$w/$1-$2"
  [ -d "$w/mail-$n" ] || python3 bench/make-mail.py "$w/mail-$n" "$n" 7
  if [ ! -f "$dir/bench.tar.gz" ]; then
    rm -rf "$dir"; mkdir -p "$dir"
    python3 bench/make-compact-archive.py "$mp" "$w/mail-$n" "$dir" "$shape"
  fi
}
for n in "$n_small" "$n_big"; do for s in live half; do build "$n" "$s"; done; done
sleep 1 # every run strictly before the window that --keep-days 0 opens now

compact() { # dir -> work copy compacted
  echo "$MP compact --archive-dir '$1' --user bench --force --keep-days 0 --keep-deleted-days 0 > /dev/null"
}
for s in live half; do
  src="$w/$n_big-$s"
  echo "== $s archive: $(stat -c %s "$src/bench.tar.gz") bytes"
  "$mp" compact --archive-dir "$src" --user bench --dry-run --keep-days 0 --keep-deleted-days 0
  cat "$src/bench.tar.gz" > /dev/null
  hyperfine --warmup 1 --runs 3 --export-json "$w/$s.json" \
    --prepare "rm -rf '$w/run'; cp -r '$src' '$w/run'" --prepare true \
    -n "mailpack compact" "$(MP=$mp; compact "$w/run")" \
    -n "gzip -dc | gzip -6" "gzip -dc '$src/bench.tar.gz' | gzip -6 > '$w/regz.tar.gz'"
  rm -rf "$w/run"; cp -r "$src" "$w/run"
  "$mp" compact --archive-dir "$w/run" --user bench --force --keep-days 0 --keep-deleted-days 0
  python3 - "$w/$s.json" <<'PY'
import json, sys
r = {x["command"]: x["median"] for x in json.load(open(sys.argv[1]))["results"]}
mp = r["mailpack compact"]
for k, v in r.items():
    print(f"{k:22s} median {v:7.2f} s" + ("" if k.startswith("mailpack") else f"   mailpack is {v / mp:5.2f}x faster"))
PY
done

echo "== peak memory (RSS) of a forced compaction, by archive size"
for n in "$n_small" "$n_big"; do for s in live half; do
  rm -rf "$w/run"; cp -r "$w/$n-$s" "$w/run"
  size=$(stat -c %s "$w/run/bench.tar.gz")
  rss=$( { /usr/bin/time -f %M "$mp" compact --archive-dir "$w/run" --user bench --force \
           --keep-days 0 --keep-deleted-days 0 > /dev/null; } 2>&1 | tail -1)
  echo "$s, $n messages, $size bytes: peak RSS $rss KiB"
done; done
rm -rf "$w/run" "$w/regz.tar.gz"
