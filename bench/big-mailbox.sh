#!/usr/bin/env bash
# Issue-19 benchmark ("Scale"): one user whose INBOX holds MESSAGES messages (default
# 1,000,000), made by a real Cyrus (bench_big_mailbox::make_big_mailbox_spool: a sample delivered
# over LMTP, the rest copies of its files indexed by Cyrus's own reconstruct) and kept in
# bench/work/big-<N>/spool. Every run works on a scratch copy whose message files are hard links
# into the kept spool: Cyrus never rewrites a message file, and the files the flag change does
# rewrite (cyrus.index and the other metadata) are real copies. So the kept spool stays as made,
# and a million messages need not be on disk twice. Side by side on that copy:
#  a. first backup: mailpack backup against tar czf of the same directories (time, peak RSS, size);
#  b. restic's first backup; then \Flagged on 1% of INBOX by a real Cyrus
#     (bench_big_mailbox::change_big_mailbox_flags), and mailpack backup (bytes added to the
#     archive, time) against restic's second backup;
#  d. wall time, CPU and peak RSS of every mailpack command on that archive;
#  c. compact --force --keep-days 0 against gzip -dc | gzip -6 of the same archive (last, since
#     it replaces the archive the other commands read).
# Every timed command is preceded by an untimed read of what it reads (vmtouch -t): this VM
# pages out idle file cache. Installs restic and vmtouch if missing.
#   usage: bench/big-mailbox.sh [MESSAGES]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
need=()
for t in restic vmtouch; do command -v $t >/dev/null || need+=($t); done
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; fi
scripts/setup
nice cargo build --release --quiet
nice cargo test --release --test it --no-run --quiet
mp=$PWD/target/release/mailpack
w=$PWD/bench/work/big-$n
mkdir -p "$w"
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== versions: mailpack $(git rev-parse --short HEAD); $(restic version | head -1); $(tar --version | head -1); gzip $(gzip --version | head -1 | cut -d' ' -f2)"

if [ ! -d "$w/spool" ]; then
  MAILPACK_BENCH_SPOOL="$w/spool" MAILPACK_BENCH_MESSAGES=$n \
    nice cargo test --release --test it bench_big_mailbox::make_big_mailbox_spool -- --ignored --nocapture
fi

s=$w/s
A=$w/A
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$w/restic
rm -rf "$s" "$A" "$w/restic" "$w/spool.tar.gz" "$w/maildir" "$w/export.mbox"
cp -al "$w/spool" "$s"
find "$s" -type f -regextype posix-extended ! -regex '.*/[0-9]+\.' -print0 |
  while IFS= read -r -d '' f; do cp -a "$f" "$f.copy" && mv "$f.copy" "$f"; done
conf=$s/etc/imapd.conf
dirs=(spool conf sieve)
echo "== spool: $(du -sh --apparent-size "$s/spool" | cut -f1) apparent, $(du -sh "$w/spool/spool" | cut -f1) on disk, $(find "$s/spool" -type f -name '*.' | wc -l) message files, $(find "$s/spool" -name cyrus.index | wc -l) mailboxes; cyrus.index + cyrus.cache of INBOX: $(find "$s/spool" -name 'cyrus.index' -size +1M -exec du -ch {} + | tail -1 | cut -f1) + $(find "$s/spool" -name 'cyrus.cache' -size +1M -exec du -ch {} + | tail -1 | cut -f1)"

results=$w/results.txt
: > "$results"
# row LABEL CMD...: wall time, peak RSS and CPU of CMD (its stdout kept in $w/out.txt, stderr in
# $w/err.txt) as one line of $results. Exit 1 is mailpack's "finished, found something to
# report" (find: nothing matched), so only a higher code counts as a failure.
row() {
  local label=$1 rc=0
  shift
  /usr/bin/time -o "$w/time.txt" -f "%e %M %U %S" "$@" > "$w/out.txt" 2> "$w/err.txt" || rc=$?
  tail -1 "$w/time.txt" | awk -v l="$label" -v rc=$rc \
    '{printf "%-46s %9.2f s %9.1f MiB %9.2f s CPU  rc %d\n", l, $1, $2 / 1024, $3 + $4, rc}' |
    tee -a "$results"
  if [ $rc -gt 1 ]; then echo "   $label failed; stderr tail:"; tail -5 "$w/err.txt"; fi
}
warm() { vmtouch -q -t "$@"; }
size() { stat -c %s "$1"; }

echo "== a. first backup"
warm "$s"
row "mailpack backup (first)" "$mp" backup --config "$conf" --archive-dir "$A"
warm "$s"
row "tar czf spool conf sieve" tar czf "$w/spool.tar.gz" -C "$s" "${dirs[@]}"
echo "   mailpack: big.tar.gz $(size "$A/big.tar.gz") B, big.idx $(size "$A/big.idx") B, archive dir $(du -sb "$A" | cut -f1) B"
echo "   tar czf:  $(size "$w/spool.tar.gz") B"
rm -f "$w/spool.tar.gz"

echo "== b. 1% flag changes"
restic init --quiet
warm "$s"
row "restic backup (first)" restic backup --quiet "$s/spool" "$s/conf" "$s/sieve"
restic_before=$(du -sb "$w/restic" | cut -f1)
/usr/bin/time -f "flag change (a real Cyrus on the copy): %e s" env MAILPACK_BENCH_SPOOL="$s" \
  nice cargo test --release --test it bench_big_mailbox::change_big_mailbox_flags -- --ignored --nocapture \
  > "$w/change.txt" 2>&1 || { tail -30 "$w/change.txt"; exit 1; }
grep -E '^(changed|flag change|test result)' "$w/change.txt" | sed 's/^/   /'
before=$(size "$A/big.tar.gz")
idx_before=$(size "$A/big.idx")
warm "$s"
row "mailpack backup (after 1% flags)" "$mp" backup --config "$conf" --archive-dir "$A"
echo "   big.tar.gz: $before -> $(size "$A/big.tar.gz") B, +$(( $(size "$A/big.tar.gz") - before )) B; big.idx $idx_before -> $(size "$A/big.idx") B"
warm "$s"
row "restic backup (after 1% flags)" restic backup "$s/spool" "$s/conf" "$s/sieve"
echo "   restic: $(grep -m1 'Added to the repository' "$w/out.txt" | xargs); repository $restic_before -> $(du -sb "$w/restic" | cut -f1) B"

echo "== d. every mailpack command on the archive"
export MAILPACK_ARCHIVE_DIR=$A
warm "$s" "$A"
row "backup (no change)" "$mp" backup --config "$conf" --archive-dir "$A"
warm "$A"
row "verify" "$mp" verify --user big
row "ls" "$mp" ls --user big
echo "   ls: $(wc -l < "$w/out.txt") lines"
sha1=$(grep -m1 -o 'files/[0-9a-f]\{40\}' "$w/out.txt" | cut -d/ -f2)
row "cat one message" "$mp" cat --user big "$sha1"
row "find --subject (first: builds the index)" "$mp" find --user big --subject "invoice 4711"
echo "   find: $(wc -l < "$w/out.txt") lines; find index $(size "$A/big.find" 2>/dev/null || echo '?') B"
row "find --from (second search)" "$mp" find --user big --from "jörg"
echo "   find: $(wc -l < "$w/out.txt") lines"
row "status" "$mp" status
row "restore --maildir" "$mp" restore --user big --maildir "$w/maildir"
echo "   maildir: $(du -sb "$w/maildir" | cut -f1) B"
rm -rf "$w/maildir"
row "restore --mbox (export)" "$mp" restore --user big --mbox "$w/export.mbox"
echo "   mbox: $(du -sb "$w/export.mbox" | cut -f1) B"
rm -rf "$w/export.mbox"
warm "$s" "$A"
row "drill --all" "$mp" drill --config "$conf" --archive-dir "$A" --all
tail -3 "$w/out.txt" | sed 's/^/   drill: /'

echo "== c. compaction"
before=$(size "$A/big.tar.gz")
warm "$A"
row "gzip -dc | gzip -6 > /dev/null" sh -c "gzip -dc '$A/big.tar.gz' | gzip -6 > /dev/null"
warm "$A"
row "compact --force --keep-days 0" "$mp" compact --user big --force --keep-days 0
echo "   big.tar.gz: $before -> $(size "$A/big.tar.gz") B"
tail -3 "$w/out.txt" | sed 's/^/   compact: /'

echo "== all rows ($n messages)"
cat "$results"
