#!/usr/bin/env bash
# Issue-17 benchmark (BENCHMARKS.md, "Whole-server check (issue 17)"): `mailpack verify
# --against-spool` (every live and archived GUID stored, every mailbox archived) against Cyrus's
# own read-only whole-server checks on the same spool, `reconstruct -n` (check only) and
# `reconstruct -n -G` (also verifies every message file's GUID). Works on a copy of the bench
# spool (bench/make-spool.sh) with a mailpack backup of it; Cyrus's tool runs as the cyrus user
# with an absolute-path copy of the config, as bench/recovery.sh does. Then restore drills of 20
# mailboxes and of all of them: time and peak RSS.
#   usage: bench/check.sh [RUNS]      (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
src=${BENCH_SPOOL:-$PWD/bench/work/spool}
w=$PWD/bench/work/check
[ -f "$src/etc/imapd.conf" ] || { echo "run bench/make-spool.sh first" >&2; exit 2; }
command -v hyperfine >/dev/null || { echo "needs hyperfine" >&2; exit 2; }
scripts/setup
cargo build --release --quiet
mp=$PWD/target/release/mailpack
rm -rf "$w" && mkdir -p "$w"
cp -a "$src" "$w/s"
s=$w/s
mkdir -p "$s/run/lock" "$s/run/proc" "$s/conf/socket"
chown -R cyrus:mail "$s"
sed "s#\\.\\./#$s/#" "$s/etc/imapd.conf" > "$s/etc/imapd-abs.conf"
conf=$s/etc/imapd-abs.conf
echo "== mailpack $($mp --version | awk '{print $2}') at $(git rev-parse --short HEAD); cyrus $(dpkg-query -W -f='${Version}' cyrus-imapd 2>/dev/null); $(hyperfine --version)"
echo "== machine: $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== spool: $(du -sh "$s/spool" | cut -f1), $(find "$s/spool" -name '*.' -type f | wc -l) message files"
"$mp" backup --config "$conf" --archive-dir "$w/A" > /dev/null
find "$s" -type f -exec cat {} + > /dev/null
cyrus() { setpriv --reuid=cyrus --regid=mail --init-groups "$@"; }
hyperfine --runs "$runs" --warmup 1 --export-json "$w/check.json" \
  -n "mailpack verify --against-spool" "$mp verify --against-spool --config '$conf' --archive-dir '$w/A' > /dev/null" \
  -n "reconstruct -n" "setpriv --reuid=cyrus --regid=mail --init-groups /usr/lib/cyrus/bin/reconstruct -C '$conf' -n > /dev/null 2>&1" \
  -n "reconstruct -n -G" "setpriv --reuid=cyrus --regid=mail --init-groups /usr/lib/cyrus/bin/reconstruct -C '$conf' -n -G > /dev/null 2>&1"
/usr/bin/time -f "mailpack verify --against-spool: max RSS %M KiB, %e s" "$mp" verify --against-spool --config "$conf" --archive-dir "$w/A" > "$w/check.out"
echo "mailpack said: $(tail -1 "$w/check.out"); owners ok: $(grep -c ': ok$' "$w/check.out")"
cyrus /usr/bin/time -f "reconstruct -n: max RSS %M KiB, %e s" /usr/lib/cyrus/bin/reconstruct -C "$conf" -n > "$w/reconstruct.out" 2>&1 || true
tail -1 "$w/reconstruct.out"
# Restore drills: 20 mailboxes (about 5,000 messages) restored into scratch and compared with
# the live spool, and every mailbox (400); time and peak RSS of each.
for n in "--sample 20 --seed 1" "--sample 20 --seed 2" "--all --seed 1"; do
  /usr/bin/time -f "mailpack drill $n: %e s, max RSS %M KiB" "$mp" drill --config "$conf" \
    --archive-dir "$w/A" $n > "$w/drill.out"
  tail -1 "$w/drill.out"
done
rm -rf "$w/s" "$w/A"
