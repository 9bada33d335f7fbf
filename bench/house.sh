#!/usr/bin/env bash
# Issue-14 check (BENCHMARKS.md, "After issue 14"): issue 14 moved code around without changing
# behaviour, so the build before it and this one should take the same time. Side by side on the
# same data, in interleaved rounds (bench/paired.py), so the VM's drift lands on both sides of
# each ratio:
#  a. full backup of bench/trust.sh's spool copy into fresh archive directories;
#  b. no-change daily run, each build on archives it made itself;
#  c. restore from one user's archive of bench/trust.sh (the same file for both builds: the
#     format did not change): one message by SHA-1 to .eml, one 250-message mailbox to mbox,
#     the whole user (4 mailboxes, 1,000 messages) to Maildir; and `ls --at` of that user;
# and the peak RSS of one full backup each.
#   usage: OLD=/path/to/old/mailpack bench/house.sh   (default: a worktree of b87f5dd, built)
set -euo pipefail
cd "$(dirname "$0")/.."
old=${OLD:-/work/old-14/target/release/mailpack}
[ -x "$old" ] || { echo "build the old version first: git worktree add /work/old-14 b87f5dd && cd /work/old-14 && cargo build --release" >&2; exit 2; }
w=$PWD/bench/work
s=$w/trust-spool
a=$w/trust/n-new
[ -d "$s" ] && [ -f "$a/user000.tar.gz" ] || { echo "run bench/make-spool.sh and bench/trust.sh first" >&2; exit 2; }
command -v vmtouch >/dev/null || { apt-get update -qq && apt-get install -y -qq vmtouch >/dev/null; }
h=$w/house
mkdir -p "$h"
# A copy of the new build, so that a build in this tree during the run cannot replace it.
cargo build --release --quiet
echo "== old $old; new $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo ', with uncommitted changes in src')"
cp target/release/mailpack "$h/mailpack-new"
new=$h/mailpack-new
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB"

conf=$s/etc/imapd.conf
# This VM pages out file cache left idle for a few seconds, and the spool has too many files to
# pin with vmtouch -l, so every command is preceded by an untimed read of what it reads.
warm="vmtouch -q -t '$s'"

echo "== a. full backup, all users (interleaved rounds)"
python3 bench/paired.py 3 "$h/full.json" --prepare "rm -rf '$h/full-old' '$h/full-new'; $warm" \
  "old=$old backup --config '$conf' --archive-dir '$h/full-old'" \
  "new=$new backup --config '$conf' --archive-dir '$h/full-new'"
rm -rf "$h/full-old" "$h/full-new"

# One full backup each, measured for memory, makes the archives of the no-change runs.
for v in old new; do
  bin=$old; [ $v = new ] && bin=$new
  rm -rf "$h/n-$v"; eval "$warm"
  /usr/bin/time -f "$v full backup: max RSS %M KiB, %e s" "$bin" backup --config "$conf" --archive-dir "$h/n-$v" > /dev/null
  echo "$v archives: $(cat "$h/n-$v"/*.tar.gz | wc -c) bytes + indexes $(cat "$h/n-$v"/*.idx | wc -c) bytes"
done

echo "== b. no-change daily run (interleaved rounds)"
python3 bench/paired.py 7 "$h/nochange.json" --prepare "$warm; vmtouch -q -t '$h/n-old' '$h/n-new'" \
  "old=$old backup --config '$conf' --archive-dir '$h/n-old'" \
  "new=$new backup --config '$conf' --archive-dir '$h/n-new'"

echo "== c. restore from user000's archive: $(stat -c %s "$a/user000.tar.gz") bytes (interleaved rounds)"
# Restores only read the archive; user000 has INBOX, Archive, Lists and Receipts, 250 each.
at=$(date -u +%s)
sha=$("$new" ls --archive-dir "$a" --user user000 --at "$at" |
  awk '/^user.user000.Archive /{f=1;next} f && /uid 200 /{print $3; exit}')
[ -n "$sha" ] || { echo "no uid 200 in user000's Archive" >&2; exit 1; }
o=$h/out
# The progress lines on stderr go to a log (paired.py stops on a failing command all the same);
# sync leaves no dirty pages from the last round's export to be written during this one.
r="--archive-dir '$a' --user user000"
prep="rm -rf '$o'; sync; vmtouch -q -t '$a/user000.tar.gz' '$a/user000.idx'"
log="2>>'$h/stderr.log'"
echo "-- ls --at"
python3 bench/paired.py 10 "$h/ls.json" --prepare "$prep" \
  "old=$old ls $r --at $at" "new=$new ls $r --at $at"
echo "-- one message by SHA-1 to .eml"
python3 bench/paired.py 10 "$h/sha1.json" --prepare "$prep" \
  "old=$old restore $r --sha1 $sha --eml '$o' $log" "new=$new restore $r --sha1 $sha --eml '$o' $log"
echo "-- mailbox Archive (250 messages) to one mbox file"
python3 bench/paired.py 10 "$h/mbox.json" --prepare "$prep" \
  "old=$old restore $r --mailbox Archive --mbox '$o' $log" "new=$new restore $r --mailbox Archive --mbox '$o' $log"
echo "-- the whole user (1,000 messages) to Maildir"
python3 bench/paired.py 5 "$h/maildir.json" --prepare "$prep" \
  "old=$old restore $r --maildir '$o' $log" "new=$new restore $r --maildir '$o' $log"
rm -rf "$o"
