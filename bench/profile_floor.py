"""The floor under bench/profile_deployed.py's W=1 figure: the same namespaces (bench/e2e's
topology: client → edge → connector → r1 → r2 → r3 → target), with a plain Python UDP relay on uvloop in each of
the client, edge and connector namespaces instead of fastproxy, and one UDP request in
flight from the client namespace to an echo on the target; the direct path (connector
namespace → target) in the same run. Whatever fastproxy does per hop comes on top of
this: three processes woken once each way per round trip, each a recv and a send.

    sudo .venv/bin/python bench/profile_floor.py [--count 3000] [--runs 2]

Prints p50/p99 round trip of each path and CPU µs per round trip of each relay. Bounded:
a fixed count of requests, each with a 1 s timeout; the relays exit after 60 s.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.e2e.systems import topology  # noqa: E402

RELAY = r'''
import asyncio, sys, uvloop
listen_port, up_host, up_port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
class Relay(asyncio.DatagramProtocol):
    def connection_made(self, transport): self.transport, self.back = transport, None
    def datagram_received(self, data, addr):
        if addr == (up_host, up_port):
            self.transport.sendto(data, self.back)
        else:
            self.back = addr
            self.transport.sendto(data, (up_host, up_port))
async def main():
    await asyncio.get_running_loop().create_datagram_endpoint(Relay, local_addr=("0.0.0.0", listen_port))
    await asyncio.sleep(60)
uvloop.run(main())
'''
ECHO = r'''
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 7)); s.settimeout(60)
while True:
    data, addr = s.recvfrom(2048); s.sendto(data, addr)
'''
CLIENT = r'''
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
dst, rtts = (sys.argv[1], int(sys.argv[2])), []
for _ in range(int(sys.argv[3])):
    start = time.perf_counter_ns(); s.sendto(b"x" * 64, dst); s.recv(2048)
    rtts.append((time.perf_counter_ns() - start) / 1000)
rtts.sort(); print(f"p50 {rtts[len(rtts) // 2]:.0f} us p99 {rtts[int(len(rtts) * 0.99)]:.0f} us")
'''


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (namespaces)")
    topo = topology()
    py = sys.executable
    with topo:
        processes = [topo.popen("target", py, "-c", ECHO),
                     topo.popen("conn", py, "-c", RELAY, "5000", "203.0.113.130", "7"),
                     topo.popen("edge", py, "-c", RELAY, "5000", "198.51.100.2", "5000"),
                     topo.popen("client", py, "-c", RELAY, "5001", "192.0.2.2", "5000")]
        try:
            time.sleep(1.5)
            relays = dict(zip(("connector", "edge", "client"), processes[1:]))
            for _ in range(args.runs):
                direct = topo.run("conn", py, "-c", CLIENT, "203.0.113.130", "7", str(args.count)).stdout.strip()
                before = {name: cpu_ticks(p.pid) for name, p in relays.items()}
                relayed = topo.run("client", py, "-c", CLIENT, "127.0.0.1", "5001", str(args.count), timeout=120).stdout.strip()
                cpu = {name: round((cpu_ticks(p.pid) - before[name]) / os.sysconf("SC_CLK_TCK") * 1e6 / args.count)
                       for name, p in relays.items()}
                print(f"direct {direct} | three relays {relayed} | relay CPU µs/rt {cpu}", flush=True)
        finally:
            for process in processes:
                process.kill()
                process.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
