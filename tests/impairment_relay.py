"""A UDP impairment relay for the fault tests (this kernel has no netem qdisc).

    python tests/impairment_relay.py LISTEN_HOST LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT [--seed N]

Forwards every datagram from a peer to the upstream (one upstream socket per peer, so
the upstream sees one address per peer) and the answers back, each way with the current
impairment: a delay of ``delay`` ± ``jitter`` seconds (uniform), a share ``reorder`` of
packets held ``reorder_extra`` seconds longer (so later ones overtake them), a share
``duplicate`` sent twice (the copy with its own delay), a share ``loss`` dropped.
Starts as a plain forwarder. Prints ``ready`` once listening; then reads one JSON object
per line on stdin: ``{"set": {"delay": 0.05, ...}}`` changes the impairment (answers
``ok``), ``{"stats": true}`` answers the counters as JSON. Ends at EOF.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from typing import Any


class Relay:
    """The relay's state: the impairment, counters, and a socket per peer."""

    def __init__(self, upstream: tuple[str, int], seed: int) -> None:
        self.upstream = upstream
        self.rng = random.Random(seed)
        self.impairment = {"delay": 0.0, "jitter": 0.0, "reorder": 0.0, "reorder_extra": 0.025,
                           "duplicate": 0.0, "loss": 0.0}
        self.stats = {"in": 0, "out": 0, "dropped": 0, "duplicated": 0, "reordered": 0, "peers": 0}
        self.listener: asyncio.DatagramTransport | None = None
        self.peers: dict[Any, asyncio.DatagramTransport] = {}
        self.loop = asyncio.get_running_loop()

    def forward(self, send: Any, data: bytes, direction: str) -> None:
        """Send ``data`` with ``send`` after the impairment decided its fate."""
        self.stats[direction] += 1
        imp = self.impairment
        if imp["loss"] and self.rng.random() < imp["loss"]:
            self.stats["dropped"] += 1
            return
        copies = 1
        if imp["duplicate"] and self.rng.random() < imp["duplicate"]:
            copies = 2
            self.stats["duplicated"] += 1
        for _ in range(copies):
            delay = max(0.0, imp["delay"] + self.rng.uniform(-imp["jitter"], imp["jitter"]))
            if imp["reorder"] and self.rng.random() < imp["reorder"]:
                delay += imp["reorder_extra"]
                self.stats["reordered"] += 1
            if delay:
                self.loop.call_later(delay, send, data)
            else:
                send(data)

    async def peer_socket(self, peer: Any) -> asyncio.DatagramTransport:
        """The upstream socket for ``peer`` (made on its first datagram)."""
        transport = self.peers.get(peer)
        if transport is None:
            relay = self

            class Upstream(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: Any) -> None:
                    assert relay.listener is not None
                    relay.forward(lambda d: relay.listener.sendto(d, peer), data, "out")  # type: ignore[union-attr]

            transport, _ = await self.loop.create_datagram_endpoint(Upstream, remote_addr=self.upstream)
            self.peers[peer] = transport
            self.stats["peers"] += 1
        return transport


async def main() -> None:
    """Run the relay until stdin closes."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("upstream_host")
    parser.add_argument("upstream_port", type=int)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    relay = Relay((args.upstream_host, args.upstream_port), args.seed)
    pending: dict[Any, list[bytes]] = {}

    class Listener(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            transport = relay.peers.get(addr)
            if transport is not None:
                relay.forward(transport.sendto, data, "in")
                return
            if addr in pending:  # its socket is being made
                pending[addr].append(data)
                return
            pending[addr] = [data]

            async def start() -> None:
                upstream = await relay.peer_socket(addr)
                for queued in pending.pop(addr):
                    relay.forward(upstream.sendto, queued, "in")

            relay.loop.create_task(start())

    relay.listener, _ = await relay.loop.create_datagram_endpoint(Listener, local_addr=(args.host, args.port))
    print("ready", flush=True)
    reader = asyncio.StreamReader()
    await relay.loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        request = json.loads(line)
        if "set" in request:
            relay.impairment.update(request["set"])
            print("ok", flush=True)
        if request.get("stats"):
            print(json.dumps(relay.stats), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
