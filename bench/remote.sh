#!/usr/bin/env bash
# Issue-7 benchmark (BENCHMARKS.md, "Remote backup"): `mailpack backup --remote` through a real
# sshd on 127.0.0.1 against a local backup of the same spool, for a full backup and a run with
# nothing changed, and the agent traffic of the no-change run for two spools with the same
# mailboxes and twice the messages. Builds the spools with a real Cyrus (bench/make-spool.sh's
# generator). Needs root (sshd logs the cyrus user in). Work files go to bench/work/remote.
#   usage: bench/remote.sh [MESSAGES] [USERS]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20000}
users=${2:-20}
command -v hyperfine >/dev/null || { apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null; }
scripts/setup
cargo build --release --quiet
mp=$PWD/target/release/mailpack
w=$PWD/bench/work/remote
mkdir -p "$w"
chmod 755 "$w"

echo "== machine"
echo "cores: $(nproc); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "$(ssh -V 2>&1); $(hyperfine --version); mailpack $($mp --version | awk '{print $2}')"

for m in "$n" "$((n * 2))"; do
  if [ ! -d "$w/spool-$m" ]; then
    [ -d "$w/mail-$m" ] || python3 bench/make-mail.py "$w/mail-$m" "$m" 7
    MAILPACK_BENCH_SPOOL="$w/spool-$m" MAILPACK_BENCH_MAIL="$w/mail-$m" MAILPACK_BENCH_USERS="$users" \
      cargo test --release --test it bench_spool::make_bench_spool -- --ignored --nocapture
    rm -rf "$w/mail-$m"
  fi
  # The copy is made by root; the agent reads it as the cyrus user, as on a mail host.
  chown -R cyrus:mail "$w/spool-$m"
done

# A private sshd that lets one key in as cyrus, forced to run the agent on the spool given by
# the client's MAILPACK_SPOOL (passed with SendEnv).
rm -f "$w/host_key" "$w/client_key" "$w/client_key.pub"
ssh-keygen -q -t ed25519 -N "" -f "$w/host_key"
ssh-keygen -q -t ed25519 -N "" -f "$w/client_key"
for m in "$n" "$((n * 2))"; do
  echo "restrict,command=\"$mp agent --config $w/spool-$m/etc/imapd.conf\" $(cat "$w/client_key.pub")" > "$w/authorized_keys-$m"
done
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$w/sshd_config" <<CFG
Port $port
ListenAddress 127.0.0.1
HostKey $w/host_key
AuthorizedKeysFile $w/authorized_keys-%u
PidFile $w/sshd.pid
StrictModes no
UsePAM yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowUsers cyrus
LogLevel ERROR
CFG
mkdir -p /run/sshd
/usr/sbin/sshd -D -e -f "$w/sshd_config" & sshd_pid=$!
trap 'kill $sshd_pid 2>/dev/null || true' EXIT
sleep 1
ssh_for() { # authorized_keys-%u cannot tell spools apart: link the one wanted as the user's file
  ln -sf "$w/authorized_keys-$1" "$w/authorized_keys-cyrus"
  echo "ssh -i $w/client_key -p $port -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o Compression=no -c aes128-gcm@openssh.com cyrus@127.0.0.1 mailpack agent"
}

cfg="$w/spool-$n/etc/imapd.conf"
remote=$(ssh_for "$n")
cat $(find "$w/spool-$n" -type f -name '[0-9]*.') > /dev/null
echo "== full backup of $n messages for $users users"
hyperfine --warmup 1 --runs 3 --export-json "$w/full.json" \
  --prepare "rm -rf '$w/a-local'" --prepare "rm -rf '$w/a-remote'" \
  -n "local" "$mp backup --config '$cfg' --archive-dir '$w/a-local' > /dev/null" \
  -n "remote over ssh" "$mp backup --remote '$remote' --archive-dir '$w/a-remote' > /dev/null"
echo "== no-change run"
# Every ssh session costs a key exchange and a login (about 0.27 s here); OpenSSH's connection
# sharing (ControlMaster/ControlPersist, set up once per backup host) leaves only a channel open.
shared="${remote/ssh /ssh -o ControlMaster=auto -o ControlPath=$w/cm-%p -o ControlPersist=120 }"
hyperfine --warmup 2 --runs 10 --export-json "$w/nochange.json" \
  -n "local" "$mp backup --config '$cfg' --archive-dir '$w/a-local' > /dev/null" \
  -n "remote over ssh" "$mp backup --remote '$remote' --archive-dir '$w/a-remote' > /dev/null" \
  -n "remote, shared ssh connection" "$mp backup --remote '$shared' --archive-dir '$w/a-remote' > /dev/null"
python3 - "$w/full.json" "$w/nochange.json" <<'PY'
import json, sys
for f in sys.argv[1:]:
    r = {x["command"]: x["median"] for x in json.load(open(f))["results"]}
    for k, v in r.items():
        if k != "local":
            print(f"{f.split('/')[-1]}: {k}: {v:.3f} s, local {r['local']:.3f} s, ratio {v / r['local']:.2f}x")
PY

echo "== agent traffic of a no-change run: same mailboxes, twice the messages"
for m in "$n" "$((n * 2))"; do
  remote=$(ssh_for "$m")
  rm -rf "$w/t-$m"
  "$mp" backup --remote "$remote" --archive-dir "$w/t-$m" > /dev/null
  "$mp" backup --remote "$remote" --archive-dir "$w/t-$m" --json | python3 -c '
import json, sys
rows = [json.loads(l)["data"] for l in sys.stdin if json.loads(l)["type"] == "user"]
boxes = sum(r["mailboxes"] for r in rows); wire = sum(r["wire_bytes"] for r in rows)
print(f"'"$m"' messages: {boxes} mailboxes, {wire} bytes over the wire, {wire / boxes:.0f} bytes per mailbox")'
done
