#!/usr/bin/env bash
# Issue-19 benchmark (BENCHMARKS.md, "Compression: libdeflate against zlib-rs"). On an ~800 MB
# real-Cyrus spool of 8 users (bench/make-mail.py's 24,000 messages delivered by a real Cyrus
# 3.6 through bench_spool::make_bench_spool, as bench/make-spool.sh does for 100 users):
#  1. full backup side by side, hyperfine, median of 3, a fresh archive directory / repository
#     for every run, the spool read into the page cache (vmtouch -t) before every run of every
#     command: mailpack backup (this build, libdeflate; also at --level 5) | mailpack backup (OLD
#     build: zlib-rs) |
#     restic backup (zstd) | tar -cf - | pigz -p <cores>;
#  2. decompression, old against new on the same archives (the new build's, two runs: a full
#     backup, then 1% new mail and flag changes): verify (every member inflated, every SHA-1
#     checked), compact --force --keep-days 0 (the first run's index versions dropped, members
#     copied, every member of the copy inflated and checked), restore --all --maildir;
#  3. the member codec micro-benchmark (src/archive/member.rs, codec_speed_on_real_members) on
#     the new build's archives.
# Installs restic, pigz, hyperfine and vmtouch if missing. Work files in bench/work/fullbackup/.
#   usage: bench/fullbackup.sh [RUNS]        (default 3)
#   OLD=/path/to/mailpack compares another build; default: $OLD_REV (the last commit before the
#   switch to libdeflate) built in a worktree under bench/work/ with this tree's target/.
#   ONLY=backup|decompress|codecs runs one part.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
runs=${1:-3}
only=${ONLY:-all}
old_rev=${OLD_REV:-3df7aba}
w=$PWD/bench/work
f=$w/fullbackup
mkdir -p "$f"
need=()
for t in restic pigz hyperfine vmtouch; do command -v $t >/dev/null || need+=($t); done
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; fi
scripts/setup
cores=$(nproc)

# The spool: 8 users, 4 folders each, 24,000 messages (2.5% delivered to two users).
s=$w/spool8
if [ ! -d "$s" ]; then
  mail=$w/spool-mail-24000
  [ -d "$mail" ] || python3 bench/make-mail.py "$mail" 24000 7
  MAILPACK_BENCH_SPOOL="$s" MAILPACK_BENCH_MAIL="$mail" MAILPACK_BENCH_USERS=8 \
    cargo test --release --test it bench_spool::make_bench_spool -- --ignored --nocapture
fi
conf=$s/etc/imapd.conf

# Builds. The old one shares this tree's target/ (only mailpack itself is compiled again), so
# both binaries are copied out before use.
old=${OLD:-}
if [ -z "$old" ]; then
  old=$w/mailpack-$old_rev
  if [ ! -x "$old" ]; then
    [ -d "$w/old-src" ] || git worktree add --detach "$w/old-src" "$old_rev"
    (cd "$w/old-src" && git checkout -q --detach "$old_rev" && CARGO_TARGET_DIR="$root/target" cargo build --release --quiet --bin mailpack)
    cp target/release/mailpack "$old"
  fi
fi
touch src/main.rs
cargo build --release --quiet --bin mailpack
new=$f/mailpack-new
cp target/release/mailpack "$new"
cmp -s "$old" "$new" && { echo "old and new binaries are the same file" >&2; exit 2; }

echo "== old $old; new $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml || echo ' with uncommitted changes')"
echo "== machine: $cores cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== versions: $(restic version | head -1); pigz $(pigz --version 2>&1 | cut -d' ' -f2); $(tar --version | head -1); $(hyperfine --version)"
echo "== spool: $(du -sh "$s/spool" | cut -f1), $(find "$s/spool" -type f | wc -l) files, $(find "$s/spool" -name '*.' -type f | wc -l) message files"
# This VM pages out idle file cache, and the spool has too many files to pin: every run of every
# command is preceded by the same untimed read of the spool.
warm="vmtouch -q -t '$s'"

if [ "$only" = all ] || [ "$only" = backup ]; then
  echo "== 1. full backup (hyperfine, $runs runs, fresh destination each run)"
  export RESTIC_PASSWORD=bench
  hyperfine --runs "$runs" --export-json "$f/full.json" \
    --prepare "rm -rf '$f/A-new'; $warm" \
    --prepare "rm -rf '$f/A-new5'; $warm" \
    --prepare "rm -rf '$f/A-old'; $warm" \
    --prepare "rm -rf '$f/restic' && restic init --quiet -r '$f/restic' > /dev/null; $warm" \
    --prepare "rm -f '$f/pigz.tar.gz'; $warm" \
    -n "mailpack backup (new, libdeflate)" "$new backup --config '$conf' --archive-dir '$f/A-new' > /dev/null" \
    -n "mailpack backup --level 5 (new)" "$new backup --level 5 --config '$conf' --archive-dir '$f/A-new5' > /dev/null" \
    -n "mailpack backup (old, zlib-rs)" "$old backup --config '$conf' --archive-dir '$f/A-old' > /dev/null" \
    -n "restic backup" "restic backup --quiet -r '$f/restic' '$s/spool' '$s/conf' '$s/sieve'" \
    -n "tar -cf - | pigz -p $cores" "tar -cf - -C '$s' spool conf sieve | pigz -6 -p $cores > '$f/pigz.tar.gz'"
  echo "sizes: mailpack new $(cat "$f"/A-new/*.tar.gz | wc -c) + indexes $(cat "$f"/A-new/*.idx | wc -c); new --level 5 $(cat "$f"/A-new5/*.tar.gz | wc -c); old $(cat "$f"/A-old/*.tar.gz | wc -c) + $(cat "$f"/A-old/*.idx | wc -c); restic repository $(du -sb "$f/restic" | cut -f1); pigz $(stat -c %s "$f/pigz.tar.gz")"
  for a in "$f"/A-new/user000.tar.gz; do tar -tzf "$a" > /dev/null && echo "GNU tar lists $a: $(tar -tzf "$a" | wc -l) entries"; gzip -t "$a" && echo "gzip -t: ok"; done
  for v in new old; do
    bin=$new; [ $v = old ] && bin=$old
    rm -rf "$f/M-$v"; eval "$warm"
    /usr/bin/time -f "$v full backup: max RSS %M KiB, %e s, user %U s, system %S s" "$bin" backup --config "$conf" --archive-dir "$f/M-$v" > /dev/null
  done
  rm -rf "$f/R"; restic init --quiet -r "$f/R" > /dev/null; eval "$warm"
  /usr/bin/time -f "restic full backup: max RSS %M KiB, %e s, user %U s, system %S s" restic backup --quiet -r "$f/R" "$s/spool" "$s/conf" "$s/sieve"
  # hyperfine runs every repetition of one command before the next, so this VM's drift (other
  # work on the machine) lands on one side of a ratio; interleaved rounds put it on both, and
  # CPU time (user + system) hardly depends on it.
  echo "== 1b. the same, interleaved rounds (bench/paired.py, $((runs + 2)) rounds after a warm-up)"
  rm -f "$f"/cpu-*.txt
  t="/usr/bin/time -a -f '%e %U %S %M'"
  python3 bench/paired.py $((runs + 2)) "$f/paired.json" \
    --prepare "rm -rf '$f/P-new' '$f/P-old' '$f/P-new5' '$f/P-restic' && restic init --quiet -r '$f/P-restic' > /dev/null; $warm" \
    "new=$t -o '$f/cpu-new.txt' $new backup --config '$conf' --archive-dir '$f/P-new'" \
    "old=$t -o '$f/cpu-old.txt' $old backup --config '$conf' --archive-dir '$f/P-old'" \
    "restic=$t -o '$f/cpu-restic.txt' restic backup --quiet -r '$f/P-restic' '$s/spool' '$s/conf' '$s/sieve'" \
    "new5=$t -o '$f/cpu-new5.txt' $new backup --level 5 --config '$conf' --archive-dir '$f/P-new5'"
  for v in new old restic new5; do
    # The first line is the warm-up round's.
    tail -n +2 "$f/cpu-$v.txt" | awk -v v=$v '{c = $2 + $3; s += c; n++; if ($4 > m) m = $4} END {printf "%-7s CPU (user+system) mean %.2f s over %d runs, peak RSS %d KiB\n", v, s / n, n, m}'
  done
  python3 - "$f/full.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
new = r["mailpack backup (new, libdeflate)"]["median"]
for k, x in r.items():
    print(f"{k:36s} median {x['median']:7.3f} s  runs {' '.join('%.2f' % t for t in x['times'])}  new/this {new / x['median']:.2f}x")
PY
fi

if [ "$only" = all ] || [ "$only" = decompress ]; then
  echo "== 2. decompression: old and new read the same archives (made by the new build)"
  # Two runs, so that compaction has something to drop: a full backup, then 1% new mail and 1%
  # flag changes made by a real Cyrus on a copy of the spool (bench_spool::change_bench_spool),
  # then a second backup of the copy.
  src=$f/D-src2
  if [ ! -d "$src" ]; then
    rm -rf "$f/spool-day2" && cp -a "$s" "$f/spool-day2"
    eval "$warm"; "$new" backup --config "$conf" --archive-dir "$src" > /dev/null
    MAILPACK_BENCH_SPOOL="$f/spool-day2" MAILPACK_BENCH_NEW=240 \
      cargo test --release --quiet --test it bench_spool::change_bench_spool -- --ignored --nocapture
    "$new" backup --config "$f/spool-day2/etc/imapd.conf" --archive-dir "$src" > /dev/null
  fi
  dwarm="vmtouch -q -t '$src'"
  hyperfine --runs "$runs" --export-json "$f/verify.json" --prepare "$dwarm" \
    -n "verify (new)" "$new verify --archive-dir '$src' > /dev/null" \
    -n "verify (old)" "$old verify --archive-dir '$src' > /dev/null"
  hyperfine --runs "$runs" --export-json "$f/compact.json" \
    --prepare "rm -rf '$f/C' && cp -a '$src' '$f/C' && vmtouch -q -t '$f/C'" \
    -n "compact --force (new)" "$new compact --force --keep-days 0 --keep-deleted-days 0 --archive-dir '$f/C' > /dev/null" \
    -n "compact --force (old)" "$old compact --force --keep-days 0 --keep-deleted-days 0 --archive-dir '$f/C' > /dev/null"
  hyperfine --runs "$runs" --export-json "$f/restore.json" \
    --prepare "rm -rf '$f/out'; sync; $dwarm" \
    -n "restore --all --maildir (new)" "$new restore --archive-dir '$src' --all --maildir '$f/out' > /dev/null" \
    -n "restore --all --maildir (old)" "$old restore --archive-dir '$src' --all --maildir '$f/out' > /dev/null"
  for v in new old; do
    bin=$new; [ $v = old ] && bin=$old
    eval "$dwarm"
    /usr/bin/time -f "$v verify: max RSS %M KiB, %e s, user %U s" "$bin" verify --archive-dir "$src" > /dev/null
  done
  python3 - "$f/verify.json" "$f/compact.json" "$f/restore.json" <<'PY'
import json, sys
for path in sys.argv[1:]:
    rows = json.load(open(path))["results"]
    new, old = rows[0], rows[1]
    for x in rows:
        print(f"{x['command']:34s} median {x['median']:7.3f} s  user {x['user']:6.2f} s  runs {' '.join('%.2f' % t for t in x['times'])}")
    print(f"  new/old {new['median'] / old['median']:.2f}x")
PY
fi

if [ "$only" = all ] || [ "$only" = codecs ]; then
  echo "== 3. member codecs on the new build's archives (one thread)"
  src=$f/D-src
  [ -d "$src" ] || { eval "$warm"; "$new" backup --config "$conf" --archive-dir "$src" > /dev/null; }
  # (one run: members as a first backup makes them)
  MAILPACK_CODEC_ARCHIVES="$(ls "$src"/*.tar.gz | tr '\n' ' ')" MAILPACK_CODEC_MB=${CODEC_MB:-256} \
    cargo test --release --quiet --lib codec_speed_on_real_members -- --ignored --nocapture 2>&1 \
    | grep -v '^running\|^test \|^$'
fi
