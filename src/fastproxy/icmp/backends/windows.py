"""Windows: IcmpSendEcho2 / Icmp6SendEcho2 (iphlpapi) through ctypes, never blocking the event loop.

Each request runs synchronously (no event, no APC) on a worker thread of a
bounded pool, with its own timeout, so many requests are in flight and a slow
destination holds one worker, never the loop or other destinations. Results
land in a queue; a loopback socket pair wakes the loop (:meth:`filenos`).

The Windows API gives results, not packets: :func:`packet_from_echo_reply`
turns the bytes of an ``ICMP_ECHO_REPLY`` / ``ICMPV6_ECHO_REPLY`` structure into
the packet the client expects (echo reply, Time Exceeded, Destination
Unreachable, Packet Too Big), in the backend normal form. It is pure and
tested on every platform with recorded structures.
"""

from __future__ import annotations

import ctypes
import queue
import socket
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastproxy._impl import core

from . import BackendFlow, BackendUnavailable, PerPacketBackend, ReceivedPacket, SendFailure
from ._wire import wrap_icmp_message

__all__ = [
    "ICMP_ECHO_REPLY_SIZE",
    "ICMPV6_ECHO_REPLY_SIZE",
    "WindowsBackend",
    "packet_from_echo_reply",
]

#: sizeof(ICMP_ECHO_REPLY) on 64-bit Windows: Address, Status, RoundTripTime, DataSize,
#: Reserved, Data (pointer), Options {Ttl, Tos, Flags, OptionsSize, OptionsData (pointer)}.
ICMP_ECHO_REPLY_SIZE = 40
#: sizeof(ICMPV6_ECHO_REPLY): IPV6_ADDRESS_EX (packed, 26 bytes) + padding, Status, RoundTripTime.
ICMPV6_ECHO_REPLY_SIZE = 36

# ipexport.h status codes.
IP_SUCCESS = 0
_V4_UNREACHABLE = {11002: 0, 11003: 1, 11004: 2, 11005: 3}  # net, host, protocol, port
_V6_UNREACHABLE = {11002: 0, 11003: 3, 11004: 1, 11005: 4, 11040: 0}  # no route, address, prohibited, port
IP_PACKET_TOO_BIG = 11009
IP_REQ_TIMED_OUT = 11010
IP_TTL_EXPIRED_TRANSIT = 11013
IP_TTL_EXPIRED_REASSEM = 11014
IP_TIME_EXCEEDED_V6 = 11041

_UNSPECIFIED = {4: bytes(4), 6: bytes(16)}


def packet_from_echo_reply(
    version: int, reply: bytes, flow: BackendFlow, request: bytes, sent_ttl: int, *, mtu: int = 0
) -> bytes | None:
    """The packet a client expects for one recorded IcmpSendEcho2 / Icmp6SendEcho2 result.

    ``reply``: the reply buffer (the structure, then the echoed data right after
    it, where IcmpSendEcho2 puts it). ``request``: the ICMP message the proxy
    asked to send (with ``flow.echo_id``), quoted in errors. ``mtu``: path MTU
    for Packet Too Big, which the API does not report (0: unknown). Returns
    None for results that produce no packet (timeout, local failures).
    """
    seq = int.from_bytes(request[6:8], "big") if len(request) >= 8 else 0
    if version == 4:
        if len(reply) < ICMP_ECHO_REPLY_SIZE:
            raise ValueError("ICMP_ECHO_REPLY too short")
        address, status, _rtt, data_size = struct.unpack_from("<4sIIH", reply, 0)
        reply_ttl = reply[24]
        data = reply[ICMP_ECHO_REPLY_SIZE : ICMP_ECHO_REPLY_SIZE + data_size]
        unreachable = _V4_UNREACHABLE
        time_exceeded = (11, 1 if status == IP_TTL_EXPIRED_REASSEM else 0)
        too_big = (3, 4)
    else:
        if len(reply) < ICMPV6_ECHO_REPLY_SIZE:
            raise ValueError("ICMPV6_ECHO_REPLY too short")
        address = bytes(reply[6:22])
        status = struct.unpack_from("<I", reply, 28)[0]
        data = reply[ICMPV6_ECHO_REPLY_SIZE:]
        reply_ttl = 64  # the v6 API does not report the hop limit
        unreachable = _V6_UNREACHABLE
        time_exceeded = (3, 1 if status == IP_TTL_EXPIRED_REASSEM else 0)
        too_big = (2, 0)
    address = bytes(address)
    if status == IP_SUCCESS:
        return bytes(core.build_echo(address, _UNSPECIFIED[version], flow.echo_id, seq, bytes(data),
                                     ttl=reply_ttl, reply=True))
    if status in (IP_TTL_EXPIRED_TRANSIT, IP_TTL_EXPIRED_REASSEM, IP_TIME_EXCEEDED_V6):
        icmp_type, icmp_code, quoted_ttl = time_exceeded[0], time_exceeded[1], 1
    elif status == IP_PACKET_TOO_BIG:
        icmp_type, icmp_code, quoted_ttl = too_big[0], too_big[1], sent_ttl
    elif status in unreachable:
        icmp_type, icmp_code, quoted_ttl = (3 if version == 4 else 1), unreachable[status], sent_ttl
    else:
        return None
    original = wrap_icmp_message(_UNSPECIFIED[version], flow.dst, quoted_ttl, request)
    error_mtu = mtu if status == IP_PACKET_TOO_BIG else 0
    return bytes(core.build_icmp_error(address, original, icmp_type, icmp_code, mtu=error_mtu))


class _IpOptionInformation(ctypes.Structure):
    _fields_ = [("Ttl", ctypes.c_ubyte), ("Tos", ctypes.c_ubyte), ("Flags", ctypes.c_ubyte),
                ("OptionsSize", ctypes.c_ubyte), ("OptionsData", ctypes.c_void_p)]


class _SockaddrIn6(ctypes.Structure):
    _fields_ = [("family", ctypes.c_ushort), ("port", ctypes.c_ushort), ("flowinfo", ctypes.c_ulong),
                ("addr", ctypes.c_ubyte * 16), ("scope_id", ctypes.c_ulong)]


_INVALID_HANDLE_VALUE = ctypes.c_void_p(-1).value


def declare_icmp_api(lib: Any) -> Any:
    """Give the iphlpapi functions we call their real C signatures. Without them ctypes
    passes every integer as a 32-bit C int, which truncates HANDLEs and pointers on 64-bit
    Windows. Returns ``lib``."""
    handle, dword, word = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint16
    options = ctypes.POINTER(_IpOptionInformation)
    sockaddr6 = ctypes.POINTER(_SockaddrIn6)
    lib.IcmpCreateFile.argtypes = []
    lib.IcmpCreateFile.restype = handle
    lib.Icmp6CreateFile.argtypes = []
    lib.Icmp6CreateFile.restype = handle
    lib.IcmpCloseHandle.argtypes = [handle]
    lib.IcmpCloseHandle.restype = ctypes.c_int
    # (IcmpHandle, Event, ApcRoutine, ApcContext, DestinationAddress, RequestData, RequestSize,
    #  RequestOptions, ReplyBuffer, ReplySize, Timeout) -> number of replies
    lib.IcmpSendEcho2.argtypes = [handle, handle, ctypes.c_void_p, ctypes.c_void_p, dword, ctypes.c_void_p, word,
                                  options, ctypes.c_void_p, dword, dword]
    lib.IcmpSendEcho2.restype = dword
    # (IcmpHandle, Event, ApcRoutine, ApcContext, SourceAddress, DestinationAddress, RequestData,
    #  RequestSize, RequestOptions, ReplyBuffer, ReplySize, Timeout) -> number of replies
    lib.Icmp6SendEcho2.argtypes = [handle, handle, ctypes.c_void_p, ctypes.c_void_p, sockaddr6, sockaddr6,
                                   ctypes.c_void_p, word, options, ctypes.c_void_p, dword, dword]
    lib.Icmp6SendEcho2.restype = dword
    return lib


class WindowsBackend(PerPacketBackend):
    """ICMP through the Windows ICMP helper API on a bounded pool of worker threads.

    ``workers``: requests in flight at once (a full pool queues, it never blocks the loop);
    ``timeout``: seconds each request waits for its reply.
    """

    name = "windows"

    def __init__(self, *, workers: int = 64, timeout: float = 3.0) -> None:
        if sys.platform != "win32":
            raise BackendUnavailable("the windows ICMP backend runs only on Windows")
        self._iphlpapi = declare_icmp_api(ctypes.WinDLL("iphlpapi.dll", use_last_error=True))  # type: ignore[attr-defined]
        self._handles = {4: self._iphlpapi.IcmpCreateFile(), 6: self._iphlpapi.Icmp6CreateFile()}
        if any(h in (None, _INVALID_HANDLE_VALUE) for h in self._handles.values()):
            error = ctypes.get_last_error()
            for h in self._handles.values():
                if h not in (None, _INVALID_HANDLE_VALUE):
                    self._iphlpapi.IcmpCloseHandle(h)
            raise BackendUnavailable(f"IcmpCreateFile / Icmp6CreateFile failed (Windows error {error})")
        self._timeout_ms = int(timeout * 1000)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fastproxy-icmp")
        self._results: queue.SimpleQueue[ReceivedPacket] = queue.SimpleQueue()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._queue: list[tuple[BackendFlow, bytes, int]] = []
        self._flows: set[BackendFlow] = set()
        self._closed = False

    def open_flow(self, flow: BackendFlow) -> None:
        """Remember the flow (the API needs no per-flow handle)."""
        self._flows.add(flow)

    def close_flow(self, flow: BackendFlow) -> None:
        """Forget the flow; results still in flight for it are dropped by the proxy."""
        self._flows.discard(flow)

    def send_echo(self, flow: BackendFlow, message: bytes | bytearray | memoryview, ttl: int) -> None:
        """Queue a request."""
        self._queue.append((flow, bytes(message), ttl))

    def flush(self) -> list[SendFailure]:
        """Hand the queued requests to the worker pool (failures come back as packets or not at all)."""
        for flow, message, ttl in self._queue:
            self._pool.submit(self._echo, flow, message, ttl)
        self._queue.clear()
        return []

    def _echo(self, flow: BackendFlow, message: bytes, ttl: int) -> None:
        payload = message[8:]
        options = _IpOptionInformation(Ttl=ttl)
        header = ICMP_ECHO_REPLY_SIZE if flow.version == 4 else ICMPV6_ECHO_REPLY_SIZE
        size = header + len(payload) + 8 + 64  # room for the data and an ICMP error
        reply = ctypes.create_string_buffer(size)
        request = ctypes.create_string_buffer(payload, len(payload))
        api = self._iphlpapi
        if flow.version == 4:
            # IPAddr: the address bytes as they are in memory (network order), read as a DWORD.
            count = api.IcmpSendEcho2(self._handles[4], None, None, None,
                                      ctypes.c_uint32.from_buffer_copy(flow.dst).value,
                                      request, len(payload), ctypes.byref(options), reply, size,
                                      self._timeout_ms)
        else:
            source = _SockaddrIn6(family=socket.AF_INET6)
            target = _SockaddrIn6(family=socket.AF_INET6)
            ctypes.memmove(target.addr, flow.dst, 16)
            count = api.Icmp6SendEcho2(self._handles[6], None, None, None, ctypes.byref(source),
                                       ctypes.byref(target), request, len(payload), ctypes.byref(options),
                                       reply, size, self._timeout_ms)
        if count == 0 and ctypes.get_last_error() != 0 and reply.raw[4:8] == bytes(4):
            return  # the call itself failed (no status): nothing to tell the client
        packet = packet_from_echo_reply(flow.version, reply.raw, flow, message, ttl)
        if packet is None or self._closed:
            return
        self._results.put(ReceivedPacket(packet, flow))
        try:
            self._wake_writer.send(b"\0")
        except OSError:
            pass  # already awake (buffer full) or closing

    def receive(self, limit: int = 256) -> list[ReceivedPacket]:
        """Results the workers finished since the last call."""
        try:
            while self._wake_reader.recv(4096):
                pass
        except OSError:
            pass
        out: list[ReceivedPacket] = []
        while len(out) < limit:
            try:
                out.append(self._results.get_nowait())
            except queue.Empty:
                break
        return out

    def filenos(self) -> list[int]:
        """The wake-up socket, readable when results are waiting."""
        return [self._wake_reader.fileno()]

    def close(self) -> None:
        """Stop the workers (in-flight requests finish within their timeout) and close the handles."""
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        for handle in self._handles.values():
            self._iphlpapi.IcmpCloseHandle(handle)
        self._wake_reader.close()
        self._wake_writer.close()
