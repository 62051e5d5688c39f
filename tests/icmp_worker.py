"""An IcmpProxy run inside a test namespace, driven over JSON lines on stdin/stdout.

``python -m tests.icmp_worker --backend ping|raw [--user UID]``: with
``--user``, every import happens first, then the process drops to that uid/gid
with no groups and no capabilities, before any socket is opened — proving the
backend needs no privilege.

Requests: ``{"op": "send", "conn": 1, "packets": [hex...], "wait": s, "expect": n}``
(feed packets, then collect up to ``n`` packets for clients within ``wait``
seconds), ``{"op": "poll", "wait": s, "expect": n}``, ``{"op": "info"}``,
``{"op": "quit"}``. Replies: ``{"out": [[conn, hex]...], "metrics": {...},
"flows": [[dst hex, echo id]...]}`` or the info.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import time

from fastproxy.icmp import IcmpProxy, create_backend
from fastproxy.icmp.backends import linux_ping, raw  # noqa: F401  (imported before dropping privileges)
from fastproxy.icmp.source import interface_addresses

ALLOWED = ["203.0.113.0/24", "2001:db8:3::/48"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", required=True)
    parser.add_argument("--user", type=int)
    args = parser.parse_args()
    interface_addresses()  # loads libc while the files are readable
    if args.user is not None:
        os.setgroups([])
        os.setresgid(args.user, args.user, args.user)
        os.setresuid(args.user, args.user, args.user)
    proxy = IcmpProxy(ALLOWED, create_backend(args.backend), idle_timeout=60.0)
    fds = proxy.backend.filenos()
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        if op == "quit":
            break
        if op == "info":
            with open("/proc/self/status") as status:
                capeff = next(l.split()[1] for l in status if l.startswith("CapEff:"))
            answer = {"uid": os.getuid(), "gid": os.getgid(), "capeff": capeff, "backend": proxy.backend.name}
        else:
            out = []
            if op == "send":
                out += proxy.handle_client_packets(request["conn"], [bytes.fromhex(p) for p in request["packets"]])
            deadline = time.monotonic() + request.get("wait", 1.0)
            expect = request.get("expect", 0)
            while len(out) < expect or expect == 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                select.select(fds, [], [], remaining)
                out += proxy.poll_backend()
            answer = {
                "out": [[conn, bytes(packet).hex()] for conn, packet in out],
                "metrics": proxy.metrics.snapshot(),
                "flows": [[flow.dst.hex(), flow.echo_id] for flow in proxy.flows()],
            }
        print(json.dumps(answer), flush=True)
    proxy.close()


if __name__ == "__main__":
    main()
