#!/usr/bin/env bash
# Captures the procfs/tcpext fixtures beside this script from a namespace it builds (run as root):
#   proc_tcp.txt, proc_tcp6.txt   /proc/net/tcp and tcp6 with a full accept queue, half-open request socks,
#                                 ESTABLISHED with queued bytes, keep-alive and retransmit timers, FIN_WAIT2,
#                                 CLOSE_WAIT, TIME_WAIT (also an orphaned FIN_WAIT2), SYN_SENT, IPv6 and mapped
#   netstat_antoe.txt             `netstat -antoe` run on exactly those bytes (the files are bind-mounted over
#                                 its /proc/<pid>/net), so the unit tests compare against netstat's own reading
#   proc_netstat.txt, nstat.txt   /proc/net/netstat after the overflows, and `nstat -asz` on those bytes
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../../../testdata/scenario.sh"

scenario_namespace capture fd00:1:2::3
start_scenario <<'PY'
# Full accept queue: backlog 1 holds two connections; the third one's SYN is dropped (ListenOverflows).
full = listener(AF_INET, "127.0.0.1", 8080, 1)
client(AF_INET, "127.0.0.1", 8080)
client(AF_INET, "127.0.0.1", 8080)
client(AF_INET, "127.0.0.1", 8080, block=False)
# Half-open request socks (the final ACK is dropped), IPv4 and IPv6.
listener(AF_INET, "0.0.0.0", 8081, 16)
client(AF_INET, "127.0.0.1", 8081, src="127.1.2.3")
client(AF_INET, "127.0.0.1", 8081, src="127.1.2.3")
listener(AF_INET6, "::1", 8081, 16)
client(AF_INET6, "::1", 8081)
# ESTABLISHED with unread bytes on both sides; the client has keep-alive on.
l3 = listener(AF_INET, "127.0.0.1", 8082, 8)
c = client(AF_INET, "127.0.0.1", 8082)
c.setsockopt(SOL_SOCKET, SO_KEEPALIVE, 1)
c.setsockopt(IPPROTO_TCP, socket.TCP_KEEPIDLE, 1000)
a = accept(l3)
c.send(b"x" * 1000)
a.send(b"y" * 500)
# Unacknowledged bytes: the data segments are dropped, so Send-Q stays and the retransmit timer runs.
l4 = listener(AF_INET, "127.0.0.1", 8083, 8)
c = client(AF_INET, "127.0.0.1", 8083)
accept(l4)
c.send(b"z" * 3000)
# TIME_WAIT (client closes first, then the server), FIN_WAIT2/CLOSE_WAIT (half close), orphaned FIN_WAIT2.
l5 = listener(AF_INET, "127.0.0.1", 8084, 8)
c = client(AF_INET, "127.0.0.1", 8084)
a = accept(l5)
c.close(); time.sleep(0.2); a.close()
c = client(AF_INET, "127.0.0.1", 8084)
accept(l5)
c.shutdown(SHUT_WR)
c = client(AF_INET, "127.0.0.1", 8084)
accept(l5)
c.close()
# SYN_SENT.
client(AF_INET, "127.0.0.1", 8099, block=False)
# IPv6: dual-stack listener with a v6 and a v4-mapped connection; a v6 TIME_WAIT on a global address.
l6 = listener(AF_INET6, "::", 8090, 8, v6only=0)
client(AF_INET6, "::1", 8090)
accept(l6)
client(AF_INET, "127.0.0.1", 8090)
accept(l6)
l7 = listener(AF_INET6, "fd00:1:2::3", 8091, 8)
c = client(AF_INET6, "fd00:1:2::3", 8091, src="fd00:1:2::3")
a = accept(l7)
c.close(); time.sleep(0.2); a.close()
PY
# Let timers run and a few retransmissions happen.
sleep 3

ip netns exec "$ns" cat /proc/net/tcp >"$here/proc_tcp.txt"
ip netns exec "$ns" cat /proc/net/tcp6 >"$here/proc_tcp6.txt"
ip netns exec "$ns" cat /proc/net/netstat >"$here/proc_netstat.txt"
mkdir "$work/net"
cp "$here/proc_tcp.txt" "$work/net/tcp"
cp "$here/proc_tcp6.txt" "$work/net/tcp6"
cp "$here/proc_netstat.txt" "$work/net/netstat"
ip netns exec "$ns" cat /proc/net/snmp >"$work/net/snmp"
ip netns exec "$ns" cat /proc/net/snmp6 >"$work/net/snmp6"
on_fixtures netstat -antoe >"$here/netstat_antoe.txt"
on_fixtures env NSTAT_HISTORY="$work/nstat.hist" nstat -asz >"$here/nstat.txt"
echo "captured into $here"
