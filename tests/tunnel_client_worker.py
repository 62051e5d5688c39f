"""A fastproxy.Client run inside a test namespace, driven over JSON lines on stdin/stdout.

``python -m tests.tunnel_client_worker --edge HOST:PORT --token T --pin PIN``

Requests and replies (one JSON object per line):
- ``{"op": "info"}`` -> ``{"v4": "...", "v6": "..."}`` (the tunnel addresses)
- ``{"op": "ping", "dst": ADDR, "ttl": N, "wait": S}`` -> ``{"src": ADDR, "type": T, "code": C}``
  for the answer to that echo request (reply or ICMP error quoting it), or ``{"timeout": true}``
- ``{"op": "udp", "dst": ADDR, "port": P, "payload": TEXT, "wait": S}`` -> ``{"reply": TEXT}``
  or ``{"timeout": true}`` (one session per destination, reused)
- ``{"op": "quit"}``
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
import time

import fastproxy
from fastproxy.packet import build_echo, parse_packet

ECHO_ID = 0x4242


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--edge", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--pin", required=True)
    args = parser.parse_args()
    loop = asyncio.get_running_loop()
    async with fastproxy.Client(args.edge, args.token, args.pin, backoff_initial=0.1, backoff_max=1.0) as client:
        sessions: dict[tuple[str, int], fastproxy.UdpSession] = {}
        seq = 0
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            request = json.loads(line)
            op = request["op"]
            if op == "quit":
                break
            answer: dict[str, object]
            if op == "info":
                answer = {"v4": str(client.address_v4), "v6": str(client.address_v6)}
            elif op == "ping":
                seq += 1
                answer = await ping(client, request["dst"], request.get("ttl", 64), seq, request.get("wait", 2.0))
            elif op == "udp":
                answer = await udp(client, sessions, request)
            else:
                answer = {"error": f"unknown op {op}"}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()


async def ping(client: fastproxy.Client, dst: str, ttl: int, seq: int, wait: float) -> dict[str, object]:
    destination = ipaddress.ip_address(dst)
    source = client.address_v4 if destination.version == 4 else client.address_v6
    if source is None or not client.connected.is_set():
        await asyncio.sleep(min(wait, 0.2))
        return {"timeout": True, "why": "not connected"}
    client.send_packets([build_echo(source.packed, destination.packed, ECHO_ID, seq, b"fastproxy-test", ttl=ttl)])
    deadline = time.monotonic() + wait
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return {"timeout": True}
        try:
            packet = await client.receive_packet(remaining)
        except asyncio.TimeoutError:
            return {"timeout": True}
        info = parse_packet(packet)
        quoted = info.inner if info.inner is not None else info
        if quoted.echo_seq == seq:  # older answers (from a timed-out ping) are skipped
            return {"src": str(ipaddress.ip_address(info.src)), "type": info.icmp_type, "code": info.icmp_code}


async def udp(client: fastproxy.Client, sessions: dict[tuple[str, int], fastproxy.UdpSession],
              request: dict[str, object]) -> dict[str, object]:
    key = (str(request["dst"]), int(request["port"]))  # type: ignore[call-overload]
    wait = float(request.get("wait", 2.0))  # type: ignore[arg-type]
    try:
        session = sessions.get(key)
        if session is None or session.closed:
            session = sessions[key] = await client.open_udp(key[0], key[1], timeout=wait)
        session.send(str(request["payload"]).encode())
        return {"reply": (await session.receive(wait)).decode()}
    except (asyncio.TimeoutError, fastproxy.UdpSessionClosed, fastproxy.UdpSessionRefused) as exc:
        return {"timeout": True, "why": repr(exc)}


if __name__ == "__main__":
    asyncio.run(main())
