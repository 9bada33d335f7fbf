#!/usr/bin/env bash
# Issue-15 benchmark (BENCHMARKS.md, "Disaster recovery"): every user of the bench spool back
# into a fresh server. mailpack: `restore --all --to-cyrus` of per-user archives of the spool,
# --jobs 1 and 2, each run into its own fresh running Cyrus (the ignored test
# bench_spool::restore_all_bench). The peer, what an admin has without mailpack: `tar -xzf` of a
# `tar czf` of the spool's data dirs (partition, configdirectory, sievedir, and etc/), then
# `reconstruct` of every mailbox with the server stopped; the test then starts a server on that
# copy and compares sample users with the source over IMAP.
#   usage: bench/recovery.sh [RUNS]      (default 3 interleaved rounds; medians reported)
# Needs bench/make-spool.sh's spool (bench/work/spool) and per-user archives of it
# (ARCHIVES, default bench/work/trust/n-new as bench/trust.sh makes them; any
# `mailpack backup --config bench/work/spool/etc/imapd.conf --archive-dir DIR` will do).
# BENCH_WORK moves the work dir (default bench/work); the peer's files go to $BENCH_WORK/recovery
# (about 4.5 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
w=${BENCH_WORK:-$PWD/bench/work}
s=$w/spool
a=${ARCHIVES:-$w/trust/n-new}
r=$w/recovery
[ -f "$s/etc/imapd.conf" ] || { echo "run bench/make-spool.sh first" >&2; exit 2; }
ls "$a"/*.tar.gz > /dev/null || { echo "no archives in $a" >&2; exit 2; }
scripts/setup
cargo build --release --quiet
mp=$PWD/target/release/mailpack
mkdir -p "$r"
echo "== mailpack $($mp --version | awk '{print $2}') at $(git rev-parse --short HEAD 2>/dev/null || echo '(not a git tree)')"
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB; $(tar --version | head -1); $(gzip --version | head -1)"
echo "== source: $(du -sh "$s" | cut -f1) spool; archives $(cat "$a"/*.tar.gz | wc -c) bytes + indexes $(cat "$a"/*.idx | wc -c) bytes"

# The data dirs as imapd.conf names them (relative to etc/ in the bench spool).
dirs=$(awk -F': *' '$1 == "configdirectory" || $1 ~ /^partition-/ || $1 == "sievedir" {print $2}' "$s/etc/imapd.conf" \
  | sed 's#^\.\./##' | sort -u | tr '\n' ' ')
echo "== peer archive of: etc $dirs"
if [ ! -f "$r/peer.tar.gz" ]; then
  # Untimed, once. The bench spool's files belong to root (it is a copy); a real spool's belong
  # to cyrus:mail, so the archive records those.
  # shellcheck disable=SC2086
  tar -C "$s" --owner=cyrus --group=mail -czf "$r/peer.tar.gz.tmp" etc $dirs
  mv "$r/peer.tar.gz.tmp" "$r/peer.tar.gz"
fi
echo "peer archive: $(stat -c %s "$r/peer.tar.gz") bytes"

p=$r/peer
# Interleaved rounds: the peer, then mailpack --jobs 1 and --jobs 2 (one run each, each into its
# own fresh server), so drift on this shared VM lands on every side.
: > "$r/runs"
for i in $(seq "$runs"); do
  rm -rf "$p"; mkdir -p "$p"; sync
  cat "$r/peer.tar.gz" > /dev/null
  /usr/bin/time -f '%e %M %U %S' -o "$r/time" tar -C "$p" -xzf "$r/peer.tar.gz"
  read -r secs rss u sy < "$r/time"
  echo "RUN tar secs=$secs rss_kib=$rss cpu_s=$(echo "$u + $sy" | bc)" >> "$r/runs"
  /usr/bin/time -f '%e' -o "$r/time" sync
  echo "RUN sync secs=$(cat "$r/time")" >> "$r/runs"
  # What a Cyrus install provides besides the data: the runtime dirs and a config with this
  # copy's paths (untimed).
  mkdir -p "$p/run/lock" "$p/run/proc" "$p/conf/socket" "$p/conf/log" "$p/conf/db" "$p/conf/msg"
  chown -R cyrus:mail "$p/run" "$p/conf/socket" "$p/conf/log" "$p/conf/db" "$p/conf/msg"
  sed "s#\\.\\./#$p/#" "$p/etc/imapd.conf" > "$p/etc/imapd-abs.conf"
  # Every mailbox, server stopped: no mailbox argument means all of them.
  /usr/bin/time -f '%e %M %U %S' -o "$r/time" setpriv --reuid=cyrus --regid=mail --init-groups \
    /usr/lib/cyrus/bin/reconstruct -C "$p/etc/imapd-abs.conf" > "$r/reconstruct.out" 2>&1
  read -r secs rss u sy < "$r/time"
  echo "RUN reconstruct secs=$secs rss_kib=$rss cpu_s=$(echo "$u + $sy" | bc)" >> "$r/runs"
  echo "round $i: $(grep '^RUN' "$r/runs" | tail -3 | cut -d' ' -f2- | paste -sd';'); reconstruct printed $(grep -c . "$r/reconstruct.out") lines (mailbox names); load average $(cut -d" " -f1 /proc/loadavg)"
  sync
  # mailpack, and sample users compared with the source (also on the peer's copy just made).
  MAILPACK_BENCH_SPOOL="$s" MAILPACK_BENCH_ARCHIVES="$a" MAILPACK_BENCH_PEER="$p" MAILPACK_BENCH_RUNS=1 \
    MAILPACK_BIN="$mp" cargo test --release --quiet --test it bench_spool::restore_all_bench -- --ignored --nocapture \
    > "$r/mailpack.out" 2> "$r/mailpack.err" || { cat "$r/mailpack.err" "$r/mailpack.out" >&2; exit 1; }
  grep -E '^(source|peer|mailpack|round)' "$r/mailpack.err" | sed 's/^/  /'
  grep '^RUN' "$r/mailpack.out" | sed 's/^RUN mailpack jobs=/RUN mailpack-j/' >> "$r/runs"
done

# Median, and the largest RSS, of one side's runs.
med() { sed -n "s/^RUN $1 .*secs=\([0-9.]*\).*/\1/p" "$r/runs" | sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
cpu() { sed -n "s/^RUN $1 .*cpu_s=\([0-9.]*\).*/\1/p" "$r/runs" | sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
rss() { sed -n "s/^RUN $1 .*rss_kib=\([0-9]*\).*/\1/p" "$r/runs" | sort -g | tail -1; }
all() { sed -n "s/^RUN $1 .*secs=\([0-9.]*\).*/\1/p" "$r/runs" | paste -sd' '; }
echo "== medians of $runs interleaved rounds: wall s (every run), CPU user+sys s, peak RSS KiB"
for k in mailpack-j1 mailpack-j2 tar reconstruct; do
  printf '%-13s %8s  (%s)  cpu %s  rss %s\n' "$k" "$(med $k)" "$(all $k)" "$(cpu $k)" "$(rss $k)"
done
echo "sync after tar: $(med sync) s"
echo "tar + reconstruct: $(echo "$(med tar) + $(med reconstruct)" | bc) s"
echo "--jobs 2 speed-up over --jobs 1: $(echo "scale=2; $(med mailpack-j1) / $(med mailpack-j2)" | bc)x"
best=$(printf '%s\n' "$(med mailpack-j1)" "$(med mailpack-j2)" | sort -g | head -1)
if [ "$(echo "$best <= $(med tar)" | bc)" = 1 ]; then verdict=met; else verdict="not met"; fi
echo "target (mailpack's whole recovery, best --jobs: $best s <= tar -xzf alone: $(med tar) s): $verdict"
