#!/usr/bin/env bash
# Issue-16 benchmark (BENCHMARKS.md, "Off-site copies (issue 16)"): mailpack's off-site copies
# against restic, both writing to the same private Garage 2.5.0 node on 127.0.0.1, on a copy of
# the bench spool (bench/make-spool.sh).
#  1. first backup: `mailpack backup --push` vs restic's first backup; also plain `backup` then
#     `push` (the split), and `push --recipient` (encrypted) of the same archives. Each round
#     starts on a fresh, empty Garage; rounds alternate which side goes first.
#  2. no-change run: `backup --push`, `push` alone and restic's next backup (hyperfine), and the
#     S3 requests Garage logged for one no-change `backup --push`.
#  3. DAYS days of 1% new mail (1,000 messages delivered and ~1,000 flag changes, by a real Cyrus:
#     bench_spool::change_bench_spool): time of each side, bytes uploaded (mailpack's own
#     counters and the bucket listing) against the archives' growth; restic's bytes added.
#  4. reads from the bucket: one message (`restore --sha1 --eml`), one mailbox and one whole user
#     (`restore --maildir`) of the smallest and the largest user: bytes fetched (mailpack's
#     "fetched" line) and GETs (Garage's request log), plain and encrypted; one message from a
#     948 MB one-owner archive (bench/work/big, issue 2's) when present; `pull` of every owner.
#   usage: bench/offsite.sh [ROUNDS] [DAYS]       (default 2 rounds, 3 days)
# BENCH_SPOOL: the spool to copy (default bench/work/spool); BIG: a directory holding a large
# bench.tar.gz + bench.idx (default bench/work/big; skipped if absent). Work files in
# bench/work/offsite (about 15 GB at the peak; the copies are removed at the end unless KEEP=1).
# The Garage binary comes from scripts/setup-garage (or MAILPACK_GARAGE).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
days=${2:-3}
root=$PWD
src=${BENCH_SPOOL:-$root/bench/work/spool}
big=${BIG:-$root/bench/work/big}
w=$root/bench/work/offsite
garage=${MAILPACK_GARAGE:-${XDG_CACHE_HOME:-$HOME/.cache}/mailpack-tools/garage-2.5.0/bin/garage}
[ -f "$src/etc/imapd.conf" ] || { echo "no spool at $src: run bench/make-spool.sh first" >&2; exit 2; }
[ -x "$garage" ] || { echo "no garage at $garage: run scripts/setup-garage" >&2; exit 2; }
for t in restic hyperfine aws age-keygen; do
  command -v $t >/dev/null || { echo "needs $t (restic, hyperfine, awscli, age)" >&2; exit 2; }
done
scripts/setup
cargo build --release --quiet
cargo test --release --quiet --test it --no-run 2>/dev/null
mp=$root/target/release/mailpack
mkdir -p "$w"
runs=$w/runs
: > "$runs"

echo "== mailpack $($mp --version | awk '{print $2}') at $(git rev-parse --short HEAD); $("$garage" --version | head -1); $(restic version | cut -d' ' -f1-2); $(aws --version 2>&1 | cut -d' ' -f1); $(hyperfine --version)"
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB; load average $(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------------------------------------
# Garage: one private node on 127.0.0.1 (formats/offsite.md; shared/reference/offsite-s3.md
# section 4, "Tested single-node start"), stopped on exit.
g=$w/garage
gpid=
stop_garage() {
  if [ -n "$gpid" ]; then kill "$gpid" 2>/dev/null || true; wait "$gpid" 2>/dev/null || true; gpid=; fi
}
cleanup() {
  stop_garage
  if [ "${KEEP:-0}" != 1 ]; then rm -rf "$w/s" "$w/A" "$w/A2" "$w/B" "$w/P" "$w/out" "$g"; fi
}
trap cleanup EXIT
start_garage() {
  stop_garage
  rm -rf "$g"; mkdir -p "$g"
  local rpc s3 admin
  read -r rpc s3 admin < <(python3 -c 'import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
  cat > "$g/garage.toml" <<EOF
metadata_dir = "$g/meta"
data_dir = "$g/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(openssl rand -hex 32)"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"

[admin]
api_bind_addr = "127.0.0.1:$admin"
EOF
  export AWS_ACCESS_KEY_ID=GK$(openssl rand -hex 12) AWS_SECRET_ACCESS_KEY=$(openssl rand -hex 32)
  export AWS_REGION=garage AWS_DEFAULT_REGION=garage AWS_ENDPOINT_URL=http://127.0.0.1:$s3
  export RESTIC_REPOSITORY=s3:http://127.0.0.1:$s3/mailpack/restic RESTIC_PASSWORD=bench
  GARAGE_DEFAULT_ACCESS_KEY=$AWS_ACCESS_KEY_ID GARAGE_DEFAULT_SECRET_KEY=$AWS_SECRET_ACCESS_KEY \
    GARAGE_DEFAULT_BUCKET=mailpack "$garage" -c "$g/garage.toml" server --single-node --default-bucket \
    > "$g/garage.log" 2>&1 &
  gpid=$!
  for _ in $(seq 60); do
    aws s3api list-objects-v2 --bucket mailpack --max-items 1 > /dev/null 2>&1 && return 0
    kill -0 "$gpid" 2>/dev/null || break
    sleep 0.5
  done
  tail -20 "$g/garage.log" >&2; echo "garage did not start" >&2; exit 1
}
# Total size and count of the objects under a prefix of the bucket.
bucket_bytes() {
  aws s3api list-objects-v2 --bucket mailpack --prefix "$1" --output json |
    python3 -c 'import json, sys
t = sys.stdin.read().strip()
c = json.loads(t).get("Contents", []) if t else []
print(sum(o["Size"] for o in c), len(c))'
}
# The newest manifest of each owner under a prefix: "total_bytes owners largest_bytes" (what a
# push that stored one manifest per owner sent besides the data and index objects).
newest_manifests() {
  aws s3api list-objects-v2 --bucket mailpack --prefix "$1" --output json |
    python3 -c 'import json, sys
t = sys.stdin.read().strip()
newest = {}
for o in (json.loads(t).get("Contents", []) if t else []):
    owner, _, rest = o["Key"].rpartition("/m/")
    if rest and (owner not in newest or rest > newest[owner][0]):
        newest[owner] = (rest, o["Size"])
sizes = [v[1] for v in newest.values()]
print(sum(sizes), len(sizes), max(sizes, default=0))'
}
# S3 requests Garage has logged so far (one INFO line per request).
requests() { grep -cE '\(key [^)]*\) (GET|PUT|POST|HEAD|DELETE) ' "$g/garage.log" || true; }
# Requests by method after the first $1 logged: "GET=… PUT=…".
methods_since() { grep -oE '\(key [^)]*\) (GET|PUT|POST|HEAD|DELETE) ' "$g/garage.log" | tail -n +$(($1 + 1)) |
  awk '{n[$NF]++} END {for (m in n) printf "%s=%d ", m, n[m]}'; }
archive_bytes() { cat "$1"/*.tar.gz "$1"/*.idx | wc -c; }
# Runs a command under /usr/bin/time, records "RUN name secs=… cpu_s=… rss_kib=… extra".
timed() {
  local name=$1; shift
  /usr/bin/time -f '%e %U %S %M' -o "$w/time" "$@"
  local secs u sy rss
  read -r secs u sy rss < "$w/time"
  echo "RUN $name secs=$secs cpu_s=$(echo "$u + $sy" | bc) rss_kib=$rss" >> "$runs"
  echo "  $name: $secs s (cpu $(echo "$u + $sy" | bc) s, max RSS $rss KiB)" >&2
}
# data_added of restic's --json summary line.
restic_added() { python3 -c 'import json, sys
for l in open(sys.argv[1]):
    if l.startswith("{") and json.loads(l).get("message_type") == "summary": print(json.loads(l)["data_added"])' "$1"; }
note() { echo "RUN $*" >> "$runs"; echo "  $*" >&2; }
sum_json() { # file type field(dotted) : sum of a field over JSON lines of that type
  python3 - "$@" <<'PY'
import json, sys
f, typ, field = sys.argv[1:4]
t = 0
for l in open(f):
    l = l.strip()
    if not l.startswith("{"): continue
    d = json.loads(l)
    if d.get("type") != typ: continue
    v = d["data"]
    for k in field.split("."): v = v[k]
    t += v
print(t)
PY
}

# ---------------------------------------------------------------------------------------------
# The spool copy, owned by cyrus:mail as on a mail host (the change step's Cyrus needs that, and
# chowning later would change every file's ctime between the first and the next backups).
s=$w/s
rm -rf "$s" && cp -a "$src" "$s"
chown -R cyrus:mail "$s"
conf=$s/etc/imapd.conf
echo "== spool: $(du -sh "$s/spool" | cut -f1), $(find "$s/spool" -name '*.' -type f | wc -l) message files"
find "$s" -type f -exec cat {} + > /dev/null
rm -f "$w/identity"
age-keygen -o "$w/identity" 2> /dev/null
recipient=$(age-keygen -y "$w/identity")
rdirs=("$s/spool" "$s/conf" "$s/sieve")

# ---------------------------------------------------------------------------------------------
echo "== 1. first backup ($rounds rounds, each on an empty Garage)"
for i in $(seq "$rounds"); do
  start_garage
  restic init --quiet > /dev/null
  rm -rf "$w/A" "$w/A2"
  sync
  side_restic() {
    timed first-restic restic backup --json "${rdirs[@]}" > "$w/restic.json"
    read -r b n < <(bucket_bytes restic/)
    note "first-restic-bytes bucket=$b objects=$n data_added=$(restic_added "$w/restic.json")"
  }
  side_mailpack() {
    timed first-mp-backup-push "$mp" backup --config "$conf" --archive-dir "$w/A" --push s3://mailpack/mp --json > "$w/bp.json"
    read -r b n < <(bucket_bytes mp/)
    note "first-mp-bytes bucket=$b objects=$n object_bytes=$(sum_json "$w/bp.json" pushed report.object_bytes) archives=$(archive_bytes "$w/A")"
  }
  side_split() {
    timed first-mp-backup "$mp" backup --config "$conf" --archive-dir "$w/A2" > /dev/null
    timed first-mp-push "$mp" push --archive-dir "$w/A2" --to s3://mailpack/mp2 --json > "$w/push.json"
    note "first-mp-push-bytes bytes_sent=$(sum_json "$w/push.json" push-summary bytes_sent) requests=$(sum_json "$w/push.json" push-summary requests)"
    timed first-mp-push-enc "$mp" push --archive-dir "$w/A2" --to s3://mailpack/enc --recipient "$recipient" --json > "$w/push.json"
    note "first-mp-push-enc-bytes bytes_sent=$(sum_json "$w/push.json" push-summary bytes_sent) requests=$(sum_json "$w/push.json" push-summary requests)"
  }
  if [ $((i % 2)) = 1 ]; then side_restic; side_mailpack; side_split; else side_split; side_mailpack; side_restic; fi
  echo "  round $i done; load average $(cut -d' ' -f1 /proc/loadavg); garage data $(du -sh "$g/data" | cut -f1); disk free $(df -h --output=avail "$w" | tail -1)"
done

# ---------------------------------------------------------------------------------------------
echo "== 2. no-change run"
# One no-change backup --push as Garage saw it, and what it added to the bucket.
read -r b0 n0 < <(bucket_bytes mp/)
before=$(requests)
"$mp" backup --config "$conf" --archive-dir "$w/A" --push s3://mailpack/mp --json > "$w/nc.json"
read -r b1 n1 < <(bucket_bytes mp/)
read -r mb mo mmax < <(newest_manifests mp/)
note "nochange-backup-push requests=$(( $(requests) - before )) [$(methods_since "$before")] objects_added=$((n1 - n0)) bucket_added=$((b1 - b0)) object_bytes=$(sum_json "$w/nc.json" pushed report.object_bytes) manifests=$mb largest_manifest=$mmax bytes_written=$(sum_json "$w/nc.json" user bytes_written)"
before=$(requests)
"$mp" push --archive-dir "$w/A" --to s3://mailpack/mp --json > "$w/nc-push.json"
note "nochange-push requests=$(sum_json "$w/nc-push.json" push-summary requests) garage_logged=$(( $(requests) - before )) bytes_sent=$(sum_json "$w/nc-push.json" push-summary bytes_sent)"
hyperfine --warmup 1 --runs 5 --export-json "$w/nochange.json" \
  -n "mailpack backup --push" "$mp backup --config '$conf' --archive-dir '$w/A' --push s3://mailpack/mp > /dev/null" \
  -n "mailpack backup; mailpack push" "$mp backup --config '$conf' --archive-dir '$w/A2' > /dev/null && $mp push --archive-dir '$w/A2' --to s3://mailpack/mp2 > /dev/null" \
  -n "mailpack backup (no push)" "$mp backup --config '$conf' --archive-dir '$w/A2' > /dev/null" \
  -n "mailpack push (nothing new)" "$mp push --archive-dir '$w/A' --to s3://mailpack/mp > /dev/null" \
  -n "restic backup" "restic backup --quiet ${rdirs[*]}"
# The runs of "backup (no push)" are pushed now, so that day 1 below measures one day only.
"$mp" push --archive-dir "$w/A2" --to s3://mailpack/mp2 > /dev/null
"$mp" push --archive-dir "$w/A2" --to s3://mailpack/enc --recipient "$recipient" > /dev/null

# ---------------------------------------------------------------------------------------------
echo "== 3. $days days of 1% new mail"
for d in $(seq "$days"); do
  touch "$w/marker"
  sleep 1
  MAILPACK_BENCH_SPOOL="$s" MAILPACK_BENCH_NEW=1000 cargo test --release --quiet --test it \
    bench_spool::change_bench_spool -- --ignored --nocapture 2>&1 | grep -E '^changed' || true
  find "$s" -type f -newer "$w/marker" -exec cat {} + > /dev/null 2>&1 || true
  sync
  a0=$(archive_bytes "$w/A"); a20=$(archive_bytes "$w/A2")
  read -r mp0 _ < <(bucket_bytes mp/); read -r mp20 _ < <(bucket_bytes mp2/)
  read -r enc0 _ < <(bucket_bytes enc/); read -r r0 _ < <(bucket_bytes restic/)
  day_restic() {
    timed day-restic restic backup --json "${rdirs[@]}" > "$w/restic.json"
    read -r r1 _ < <(bucket_bytes restic/)
    note "day-restic-bytes bucket_added=$((r1 - r0)) data_added=$(restic_added "$w/restic.json")"
  }
  day_mailpack() {
    timed day-mp-backup-push "$mp" backup --config "$conf" --archive-dir "$w/A" --push s3://mailpack/mp --json > "$w/bp.json"
    read -r mp1 _ < <(bucket_bytes mp/)
    read -r mb _ mmax < <(newest_manifests mp/)
    note "day-mp-bytes growth=$(( $(archive_bytes "$w/A") - a0 )) object_bytes=$(sum_json "$w/bp.json" pushed report.object_bytes) manifests=$mb largest_manifest=$mmax bucket_added=$((mp1 - mp0)) messages_added=$(sum_json "$w/bp.json" user messages_added)"
  }
  day_split() {
    timed day-mp-backup "$mp" backup --config "$conf" --archive-dir "$w/A2" > /dev/null
    timed day-mp-push "$mp" push --archive-dir "$w/A2" --to s3://mailpack/mp2 --json > "$w/push.json"
    read -r mp21 _ < <(bucket_bytes mp2/)
    read -r mb _ mmax < <(newest_manifests mp2/)
    note "day-mp-push-bytes growth=$(( $(archive_bytes "$w/A2") - a20 )) manifests=$mb largest_manifest=$mmax bytes_sent=$(sum_json "$w/push.json" push-summary bytes_sent) requests=$(sum_json "$w/push.json" push-summary requests) bucket_added=$((mp21 - mp20))"
    timed day-mp-push-enc "$mp" push --archive-dir "$w/A2" --to s3://mailpack/enc --recipient "$recipient" --json > "$w/push.json"
    read -r enc1 _ < <(bucket_bytes enc/)
    note "day-mp-push-enc-bytes growth=$(( $(archive_bytes "$w/A2") - a20 )) bytes_sent=$(sum_json "$w/push.json" push-summary bytes_sent) requests=$(sum_json "$w/push.json" push-summary requests) bucket_added=$((enc1 - enc0))"
  }
  if [ $((d % 2)) = 1 ]; then day_restic; day_mailpack; day_split; else day_split; day_mailpack; day_restic; fi
  echo "  day $d done; load average $(cut -d' ' -f1 /proc/loadavg)"
done

# ---------------------------------------------------------------------------------------------
echo "== 4. reads from the bucket"
export MAILPACK_OFFSITE_KEY=$w/A/offsite.key
small=$(ls -S "$w"/A/*.tar.gz | tail -1 | xargs basename | sed 's/\.tar\.gz$//')
large=$(ls -S "$w"/A/*.tar.gz | head -1 | xargs basename | sed 's/\.tar\.gz$//')
out=$w/out
# bytes from mailpack's "fetched 1.3 MiB" line (one decimal: ±0.05 of the unit)
fetched() { python3 -c 'import re, sys
m = re.search(r"fetched ([0-9.]+) (B|KiB|MiB|GiB)", open(sys.argv[1]).read())
print(int(float(m.group(1)) * {"B": 1, "KiB": 1024, "MiB": 1 << 20, "GiB": 1 << 30}[m.group(2)]))' "$1"; }
read_case() { # name prefix args...
  local name=$1 prefix=$2; shift 2
  for k in 1 2 3; do
    rm -rf "$out"; mkdir -p "$out"
    local before; before=$(requests)
    /usr/bin/time -f '%e' -o "$w/time" "$mp" restore --archive-dir "s3://mailpack/$prefix" "$@" > /dev/null 2> "$w/read.err" ||
      { cat "$w/read.err" >&2; exit 1; }
    note "read $name secs=$(cat "$w/time") fetched=$(fetched "$w/read.err") gets=$(( $(requests) - before )) files=$(find "$out" -type f | wc -l)"
  done
}
for u in "$small" "$large"; do
  read -r ib in < <(bucket_bytes "mp/users/$u/i/")
  read -r db dn < <(bucket_bytes "mp/users/$u/d/")
  read -r mb mn < <(bucket_bytes "mp/users/$u/m/")
  note "owner $u data=$db in $dn objects, index=$ib in $in objects, manifests=$mb in $mn objects; local archive $(stat -c %s "$w/A/$u.tar.gz") + index $(stat -c %s "$w/A/$u.idx")"
  "$mp" ls --archive-dir "$w/A" --user "$u" --at 2100-01-01 > "$w/ls.txt"
  grep uniqueid "$w/ls.txt" | sed 's/^/  /'
  # A message from the middle of the INBOX listing.
  sha=$(awk '/^user\./ {inbox = ($1 ~ /^user\.[^.]*$/)} inbox && $1 == "uid" {print $3}' "$w/ls.txt" | awk '{a[NR]=$0} END {print a[int(NR/2)+1]}')
  read_case "$u-one" mp --user "$u" --sha1 "$sha" --eml "$out"
  read_case "$u-one-enc" enc --user "$u" --sha1 "$sha" --eml "$out" --identity "$w/identity" --offsite-key "$w/A2/offsite.key"
  read_case "$u-inbox" mp --user "$u" --mailbox INBOX --maildir "$out/m"
  read_case "$u-user" mp --user "$u" --maildir "$out/m"
  read_case "$u-user-enc" enc --user "$u" --maildir "$out/m" --identity "$w/identity" --offsite-key "$w/A2/offsite.key"
  /usr/bin/time -f '%e' -o "$w/time" "$mp" restore --archive-dir "$w/A" --user "$u" --maildir "$out/local" > /dev/null 2>&1
  note "read $u-user-local secs=$(cat "$w/time")"
done
if [ -f "$big/bench.tar.gz" ]; then
  rm -rf "$w/B"; mkdir -p "$w/B"; cp "$big/bench.tar.gz" "$big/bench.idx" "$w/B/"
  "$mp" push --archive-dir "$w/B" --to s3://mailpack/big --offsite-key "$w/A/offsite.key" --json > "$w/push.json"
  read -r ib _ < <(bucket_bytes "big/users/bench/i/")
  note "owner bench(big) archive_objects=$(stat -c %s "$w/B/bench.tar.gz") index_objects=$ib"
  sha=$("$mp" ls --archive-dir "$w/B" --user bench | awk '$3 == "file" {print $5}' | awk 'NR == 20000' | sed 's#^files/##')
  read_case "bench(big)-one" big --user bench --sha1 "$sha" --eml "$out"
fi
rm -rf "$w/P"
read -r pb pn < <(bucket_bytes mp/)
note "bucket mp/ before pull: $pb bytes in $pn objects"
timed pull "$mp" pull --from s3://mailpack/mp --archive-dir "$w/P" --json > /dev/null 2> "$w/pull.err"
note "pull fetched=$(fetched "$w/pull.err") archives=$(archive_bytes "$w/P") identical=$(cd "$w/A" && for f in *.tar.gz *.idx; do cmp -s "$f" "$w/P/$f" || echo "$f"; done | wc -l | sed 's/^0$/all/')"

# ---------------------------------------------------------------------------------------------
echo "== summary (medians)"
med() { sed -n "s/^RUN $1 .*secs=\([0-9.]*\).*/\1/p" "$runs" | sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
all() { sed -n "s/^RUN $1 .*secs=\([0-9.]*\).*/\1/p" "$runs" | paste -sd' '; }
for k in first-restic first-mp-backup-push first-mp-backup first-mp-push first-mp-push-enc \
         day-restic day-mp-backup-push day-mp-backup day-mp-push day-mp-push-enc pull; do
  printf '%-22s median %8s s   (%s)\n' "$k" "$(med $k)" "$(all $k)"
done
python3 - "$w/nochange.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
for k, x in r.items():
    print(f"{k:24s} median {x['median']:8.3f} s   (" + " ".join(f"{t:.3f}" for t in x["times"]) + ")")
for k in r:
    if k != "restic backup":
        print(f"restic backup / {k}: {r['restic backup']['median'] / r[k]['median']:.1f}x")
PY
grep '^RUN' "$runs" | grep -vE 'secs=' | sed 's/^RUN //'
grep '^RUN read' "$runs" | sed 's/^RUN //'
