#!/usr/bin/env bash
# Captures the table fixtures beside this script from a namespace it builds (run as root, with the observer
# binary in $OBSERVER, default target/debug/observer):
#   sockets.jsonl                 `observer netstat --json`: the table as sock_diag gives it
#   ss_tan.txt                    `ss -tan`, taken right before and right after sockets.jsonl (the two agree)
#   proc_tcp.txt, proc_tcp6.txt   /proc/net/tcp and tcp6 of the same moment
#   netstat_ant.txt, netstat_antW.txt, netstat_antoe.txt, netstat_antpe.txt
#                                 netstat run on exactly those /proc bytes (bind-mounted over its /proc/<pid>/net)
#   ntop.txt                      IPv6 addresses (32 hex digits) and glibc's inet_ntop of each, through Python
# The scenario holds still: listeners (one with a full accept queue, v6only and dual-stack wildcards, an
# IPv4-mapped and a long IPv6 address), half-open request socks, ESTABLISHED with unread and unacknowledged
# bytes, FIN_WAIT2/CLOSE_WAIT, TIME_WAIT on long IPv6 addresses, SYN_SENT.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
observer=${OBSERVER:-$here/../../../../target/debug/observer}
source "$here/../../testdata/scenario.sh"

scenario_namespace tablecap fd00:1234:5678:9abc:def0:1234:5678:9abc
start_scenario <<'PY'
LONG = "fd00:1234:5678:9abc:def0:1234:5678:9abc"
# An sshd-like pair: IPv4 wildcard and a v6only IPv6 wildcard on one port; a dual-stack wildcard elsewhere.
listener(AF_INET, "0.0.0.0", 22, 128)
listener(AF_INET6, "::", 22, 128, v6only=1)
dual = listener(AF_INET6, "::", 2223, 5, v6only=0)
# Full accept queue: backlog 1 holds two connections; the third one's SYN is dropped.
listener(AF_INET, "127.0.0.1", 8080, 1)
client(AF_INET, "127.0.0.1", 8080)
client(AF_INET, "127.0.0.1", 8080)
client(AF_INET, "127.0.0.1", 8080, block=False)
# Half-open request socks (the final ACK is dropped), IPv4 and IPv6.
listener(AF_INET, "0.0.0.0", 8081, 16)
client(AF_INET, "127.0.0.1", 8081)
listener(AF_INET6, "::1", 8081, 16)
client(AF_INET6, "::1", 8081)
# An IPv4-mapped listener and a long IPv6 one (netstat cuts it).
listener(AF_INET6, "::ffff:127.0.0.1", 8082, 8)
long = listener(AF_INET6, LONG, 8443, 8)
# ESTABLISHED with unread bytes on both sides, over the dual-stack listener from IPv4 (mapped) and IPv6.
c = client(AF_INET, "127.0.0.1", 2223)
a = accept(dual)
c.send(b"x" * 1000)
a.send(b"y" * 500)
c = client(AF_INET6, "::1", 2223)
a = accept(dual)
c.send(b"x" * 77)
# Unacknowledged bytes: the data segments are dropped, so Send-Q stays.
l4 = listener(AF_INET, "127.0.0.1", 8083, 8)
c = client(AF_INET, "127.0.0.1", 8083)
accept(l4)
c.send(b"z" * 3000)
# TIME_WAIT on the long address (both ends cut), FIN_WAIT2/CLOSE_WAIT (half close).
c = client(AF_INET6, LONG, 8443, src=LONG)
a = accept(long)
c.close(); time.sleep(0.2); a.close()
l5 = listener(AF_INET, "127.0.0.1", 8084, 8)
c = client(AF_INET, "127.0.0.1", 8084)
accept(l5)
c.shutdown(SHUT_WR)
# SYN_SENT.
client(AF_INET, "127.0.0.1", 8099, block=False)
PY
sleep 2

for _ in $(seq 5); do
    ip netns exec "$ns" ss -tan >"$work/ss1"
    ip netns exec "$ns" "$observer" netstat --json >"$work/sockets.jsonl"
    ip netns exec "$ns" cat /proc/net/tcp >"$work/proc_tcp.txt"
    ip netns exec "$ns" cat /proc/net/tcp6 >"$work/proc_tcp6.txt"
    ip netns exec "$ns" ss -tan >"$work/ss2"
    cmp -s "$work/ss1" "$work/ss2" && break
done
cmp -s "$work/ss1" "$work/ss2" || { echo "ss output kept changing"; exit 1; }
cp "$work/ss1" "$here/ss_tan.txt"
cp "$work/sockets.jsonl" "$work/proc_tcp.txt" "$work/proc_tcp6.txt" "$here/"

mkdir "$work/net"
cp "$here/proc_tcp.txt" "$work/net/tcp"
cp "$here/proc_tcp6.txt" "$work/net/tcp6"
for f in udp udp6 raw raw6 unix; do : >"$work/net/$f"; done
on_fixtures env LC_ALL=C netstat -ant >"$here/netstat_ant.txt"
on_fixtures env LC_ALL=C netstat -antW >"$here/netstat_antW.txt"
on_fixtures env LC_ALL=C netstat -antoe >"$here/netstat_antoe.txt"
on_fixtures env LC_ALL=C netstat -antpe >"$here/netstat_antpe.txt"
python3 - >"$here/ntop.txt" <<'PY'
import socket
for h in ["0" * 32, "0" * 31 + "1", "0" * 20 + "ffff0a630001", "0" * 24 + "0a000001", "0" * 20 + "ffff" + "0" * 8,
          "fd00123456789abcdef0123456789abc", "fe800000000000000000000000001234", "00010000000000020000000000000003",
          "00010000000000020000000000030004", "00010000000200030004000500060007", "0001" + "0" * 28,
          "00000001000000000000000000000000", "20010db8000000010000000000000001"]:
    print(h, socket.inet_ntop(socket.AF_INET6, bytes.fromhex(h)))
PY
echo "captured into $here"
