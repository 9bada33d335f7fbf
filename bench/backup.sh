#!/usr/bin/env bash
# Issue-4 benchmarks (BENCHMARKS.md, "Daily backup"), on the spool made by bench/make-spool.sh:
#  1. full backup: mailpack backup vs tar czf vs tar | pigz, output sizes, peak memory;
#  2. no-change daily run: mailpack vs restic's second backup vs rsync -a with nothing to copy;
#  3. after 1% new messages and 1% flag changes (made by a real Cyrus): mailpack vs restic.
# Installs restic, pigz, rsync and hyperfine. Works on a copy of the spool (bench/work/s).
set -euo pipefail
cd "$(dirname "$0")/.."
w=$PWD/bench/work
[ -d "$w/spool" ] || { echo "run bench/make-spool.sh first" >&2; exit 2; }
need=()
for t in restic pigz rsync hyperfine; do command -v $t >/dev/null || need+=($t); done
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; fi
scripts/setup
cargo build --release --quiet
mp=$PWD/target/release/mailpack
cores=$(nproc)
echo "== versions: $(restic version | head -1); pigz $(pigz --version 2>&1 | cut -d' ' -f2); $(rsync --version | head -1); $(tar --version | head -1); $(gzip --version | head -1)"
echo "== machine: $cores cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB"

s=$w/s
rm -rf "$s" && cp -a "$w/spool" "$s"
conf=$s/etc/imapd.conf
data=(-C "$s" spool conf sieve)
echo "== spool: $(du -sh "$s/spool" | cut -f1), $(find "$s/spool" -name '*.' -type f | wc -l) message files"
find "$s" -type f -exec cat {} + > /dev/null

echo "== 1. full backup (median of 2)"
hyperfine --runs 2 --export-json "$w/full.json" \
  --prepare true --prepare true --prepare "rm -rf '$w/A'" \
  -n "tar czf" "tar czf '$w/full.tar.gz' ${data[*]}" \
  -n "tar cf - | pigz -p $cores" "tar cf - ${data[*]} | pigz -6 -p $cores > '$w/full-pigz.tar.gz'" \
  -n "mailpack backup" "$mp backup --config '$conf' --archive-dir '$w/A' > /dev/null"
echo "sizes: tar czf (gzip -6) $(stat -c %s "$w/full.tar.gz"); pigz $(stat -c %s "$w/full-pigz.tar.gz"); mailpack archives $(cat "$w"/A/*.tar.gz | wc -c) + indexes $(cat "$w"/A/*.idx | wc -c)"
rm -rf "$w/A"
/usr/bin/time -f "mailpack backup, all 100 users: max RSS %M KiB, %e s" "$mp" backup --config "$conf" --archive-dir "$w/A" > /dev/null
rm -rf "$w/A10"
/usr/bin/time -f "mailpack backup, 10 users: max RSS %M KiB, %e s" "$mp" backup --config "$conf" --archive-dir "$w/A10" $(for u in $(seq -f 'user%03g' 0 9); do echo --user $u; done) > /dev/null

echo "== 2. no-change daily run"
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$w/restic
rm -rf "$w/restic" "$w/mirror"
restic init --quiet
restic backup --quiet "$s/spool" "$s/conf" "$s/sieve"
rsync -a "$s/" "$w/mirror/"
hyperfine --warmup 1 --runs 5 --export-json "$w/nochange.json" \
  -n "mailpack backup" "$mp backup --config '$conf' --archive-dir '$w/A' > /dev/null" \
  -n "restic backup (2nd run)" "restic backup --quiet '$s/spool' '$s/conf' '$s/sieve'" \
  -n "rsync -a (nothing to copy)" "rsync -a '$s/' '$w/mirror/'"

echo "== 3. after 1% new messages and 1% flag changes"
MAILPACK_BENCH_SPOOL="$s" MAILPACK_BENCH_NEW=1000 cargo test --release --quiet --test it bench_spool::change_bench_spool -- --ignored --nocapture 2>&1 | tail -2
find "$s" -type f -newer "$w/full.tar.gz" -exec cat {} + > /dev/null 2>&1 || true
/usr/bin/time -f "restic backup after the change: %e s, max RSS %M KiB" restic backup --quiet "$s/spool" "$s/conf" "$s/sieve"
/usr/bin/time -f "mailpack backup after the change: %e s, max RSS %M KiB" "$mp" backup --config "$conf" --archive-dir "$w/A" --json > "$w/after.json"
python3 - "$w/after.json" <<'PY'
import json, sys
rows = [json.loads(l)["data"] for l in open(sys.argv[1])]
print("mailpack after the change: %d messages added, %d mailboxes changed of %d, %d bytes read" % (
    sum(r["messages_added"] for r in rows), sum(r["changed"] for r in rows), sum(r["mailboxes"] for r in rows), sum(r["bytes_read"] for r in rows)))
PY
python3 - "$w/full.json" "$w/nochange.json" <<'PY'
import json, sys
for f in sys.argv[1:]:
    r = {x["command"]: x["median"] for x in json.load(open(f))["results"]}
    mp = r["mailpack backup"]
    for k, v in r.items():
        print(f"{k:32s} median {v:9.3f} s" + ("" if k == "mailpack backup" else f"   mailpack is {v / mp:6.1f}x faster"))
PY
