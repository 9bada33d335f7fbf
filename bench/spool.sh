#!/usr/bin/env bash
# Issue-3 benchmarks (BENCHMARKS.md, "Reading a spool"): `mailpack spool ls` over the benchmark
# spool made by bench/make-spool.sh, against Cyrus's own `mbexamine '*'` on the same files, and
# cyrus.index parsing speed in records per second. Page cache warm.
set -euo pipefail
cd "$(dirname "$0")/.."
w=$PWD/bench/work
[ -d "$w/spool" ] || { echo "run bench/make-spool.sh first" >&2; exit 2; }
command -v hyperfine >/dev/null || { apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null; }
cargo build --release --quiet
mp=$PWD/target/release/mailpack
conf=$w/spool/etc/imapd.conf
# Cyrus refuses to run as root and resolves relative paths against its working directory.
chown -R cyrus:mail "$w/spool"
cat > "$w/examine.sh" <<EOS
#!/bin/sh
cd "$w/spool/etc" && exec runuser -u cyrus -- /usr/lib/cyrus/bin/mbexamine -C imapd.conf '*'
EOS
chmod +x "$w/examine.sh"

records=$("$mp" spool ls --config "$conf" --messages --json | python3 -c 'import json,sys
n=0
for l in sys.stdin:
    d=json.loads(l)["data"]
    for m in d.get("mailboxes",[]): n+=len(m.get("records") or [])
print(n)')
mailboxes=$("$mp" spool ls --config "$conf" --json | python3 -c 'import json,sys
print(sum(len(json.loads(l)["data"].get("mailboxes",[])) for l in sys.stdin))')
echo "spool: $(du -sh "$w/spool/spool" | cut -f1) in $mailboxes mailboxes, $records index records"
echo "peer check: mbexamine lists $("$w/examine.sh" 2>/dev/null | grep -c '^[0-9]*> UID:') records"
hyperfine --warmup 1 --runs 5 --export-json "$w/spool.json" \
  -n "mailpack spool ls" "$mp spool ls --config '$conf' > /dev/null" \
  -n "mailpack spool ls --messages --json" "$mp spool ls --config '$conf' --messages --json > /dev/null" \
  -n "mbexamine '*' (Cyrus)" "'$w/examine.sh' > /dev/null 2>&1"
python3 - "$w/spool.json" "$records" <<'PY'
import json, sys
r = {x["command"]: x["median"] for x in json.load(open(sys.argv[1]))["results"]}
n = int(sys.argv[2])
for k, v in r.items():
    print(f"{k:40s} median {v*1000:8.1f} ms   {n / v / 1e6:6.2f} M records/s")
peer = r["mbexamine '*' (Cyrus)"]
print(f"mailpack spool ls --messages is {peer / r['mailpack spool ls --messages --json']:.1f}x faster than mbexamine")
PY
