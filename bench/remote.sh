#!/usr/bin/env bash
# Issue-7 benchmark (BENCHMARKS.md, "Remote backup"): `mailpack backup --remote` through a real
# sshd on 127.0.0.1 against a local backup of the same spool, for a full backup and a run with
# nothing changed, and the agent traffic of the no-change run for two spools with the same
# mailboxes and twice the messages. The no-change run is also timed on a spool of MANY users with
# four messages each, where the fixed cost of an ssh login is spread as on a real server. Builds
# the spools with a real Cyrus (bench/make-spool.sh's generator). Needs root (sshd logs the cyrus
# user in). Work files go to bench/work/remote.
#   usage: bench/remote.sh [MESSAGES] [USERS] [MANY]
# ONLY=full, ONLY=nochange or ONLY=traffic runs that part alone.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20000}
users=${2:-20}
many=${3:-2000}
only=${ONLY:-all}
part() { [ "$only" = all ] || [ "$only" = "$1" ]; }
command -v vmtouch >/dev/null || { apt-get update -qq && apt-get install -y -qq vmtouch >/dev/null; }
scripts/setup
cargo build --release --quiet
mp=$PWD/target/release/mailpack
w=$PWD/bench/work/remote
mkdir -p "$w"
chmod 755 "$w"

echo "== machine"
echo "cores: $(nproc); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "$(ssh -V 2>&1); mailpack $($mp --version | awk '{print $2}')"

# spool name, messages, users
for spec in "$n $n $users" "$((n * 2)) $((n * 2)) $users" "u$many $((many * 4)) $many"; do
  read -r name m u <<< "$spec"
  if [ ! -d "$w/spool-$name" ]; then
    [ -d "$w/mail-$name" ] || python3 bench/make-mail.py "$w/mail-$name" "$m" 7
    MAILPACK_BENCH_SPOOL="$w/spool-$name" MAILPACK_BENCH_MAIL="$w/mail-$name" MAILPACK_BENCH_USERS="$u" \
      cargo test --release --test it bench_spool::make_bench_spool -- --ignored --nocapture
    rm -rf "$w/mail-$name"
  fi
  # The copy is made by root; the agent reads it as the cyrus user, as on a mail host.
  chown -R cyrus:mail "$w/spool-$name"
done

# A private sshd that lets one key in as cyrus, forced to run the agent on one spool.
rm -f "$w/host_key" "$w/client_key" "$w/client_key.pub"
ssh-keygen -q -t ed25519 -N "" -f "$w/host_key"
ssh-keygen -q -t ed25519 -N "" -f "$w/client_key"
for m in "$n" "$((n * 2))" "u$many"; do
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

# Every ssh session costs a key exchange and a login (about 0.27 s here); OpenSSH's connection
# sharing (ControlMaster/ControlPersist, set up once per backup host) leaves only a channel open.
shared_for() { local r; r=$(ssh_for "$1"); echo "${r/ssh /ssh -o ControlMaster=auto -o ControlPath=$w/cm-$1-%p -o ControlPersist=300 }"; }

# This VM pages out file cache that sits idle for a few seconds (DAMON reclaim), so a spool read
# a minute ago comes from disk again, by chance for one side or the other. Both sides read the
# same spool, so it is pinned in memory while it is compared (one spool at a time: every file
# pinned is a mapping, and vm.max_map_count allows 65,530).
pin() { unpin; vmtouch -q -l -d -w -P "$w/vmtouch.pid" "$w/spool-$1"; }
unpin() { [ -f "$w/vmtouch.pid" ] && kill "$(cat "$w/vmtouch.pid")" 2>/dev/null; rm -f "$w/vmtouch.pid"; }
trap 'kill $sshd_pid 2>/dev/null || true; unpin || true' EXIT

part full && for m in "$n" "$((n * 2))"; do
  echo "== full backup of $m messages for $users users (interleaved rounds)"
  pin "$m"
  cfg="$w/spool-$m/etc/imapd.conf"
  python3 bench/paired.py 10 "$w/full-$m.json" --prepare "rm -rf '$w/a-local' '$w/a-remote' '$w/a-shared'" \
    "local=$mp backup --config '$cfg' --archive-dir '$w/a-local'" \
    "remote over ssh=$mp backup --remote '$(ssh_for "$m")' --archive-dir '$w/a-remote'" \
    "remote, shared ssh connection=$mp backup --remote '$(shared_for "$m")' --archive-dir '$w/a-shared'"
done

part nochange && for spool in "$n" "u$many"; do
  pin "$spool"
  cfg="$w/spool-$spool/etc/imapd.conf"
  [ -d "$w/n-local-$spool" ] || "$mp" backup --config "$cfg" --archive-dir "$w/n-local-$spool" > /dev/null
  [ -d "$w/n-remote-$spool" ] || "$mp" backup --remote "$(ssh_for "$spool")" --archive-dir "$w/n-remote-$spool" > /dev/null
  echo "== no-change run, spool $spool (interleaved rounds)"
  python3 bench/paired.py 10 "$w/nochange-$spool.json" \
    "local=$mp backup --config '$cfg' --archive-dir '$w/n-local-$spool'" \
    "remote over ssh=$mp backup --remote '$(ssh_for "$spool")' --archive-dir '$w/n-remote-$spool'" \
    "remote, shared ssh connection=$mp backup --remote '$(shared_for "$spool")' --archive-dir '$w/n-remote-$spool'"
done

unpin
part traffic || exit 0
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
