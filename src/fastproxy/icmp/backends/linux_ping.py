"""Linux unprivileged ICMP "ping sockets" (SOCK_DGRAM, IPPROTO_ICMP / IPPROTO_ICMPV6).

One socket per flow, bound to the flow's assigned echo id (the kernel uses the
bound port as the echo id and demultiplexes replies by it) and connected to the
flow's destination (the kernel keeps the route; sends need no address). Requests
go out in one sendmmsg per flow and run of equal TTL / hop limit (a socket
option, set when it changes); replies come in one recvmmsg per ready socket,
all into one shared batch. ICMP errors caused by our requests arrive on the
socket's error queue (IP_RECVERR / IPV6_RECVERR, MSG_ERRQUEUE) as a
``struct sock_extended_err`` with the offender's address; they are rebuilt as
the ICMP error packet the client expects, quoting the request as sent (the last
few requests of each flow are kept for that, bounded).

An ICMP error also leaves its errno pending on the socket (``sk_err``), and the
kernel fails the socket's next send with it (EHOSTUNREACH for a Time Exceeded):
traceroute's probe for hop n+1 would fail because hop n answered the previous
one. A send refused with such an errno is therefore retried once after the
socket's error queue is drained (which clears the pending error; SO_ERROR clears
what is left); the errors drained then are rebuilt like any other and handed to
the proxy with the flush (:meth:`PingSocketBackend.received_while_sending`), so
each probe gets its router's own answer.

Needs no privilege, only that one of the process's groups is inside
``net.ipv4.ping_group_range`` (which also governs ICMPv6 ping sockets).
"""

from __future__ import annotations

import array
import errno as errno_codes
import os
import select
import socket
import struct

from fastproxy._impl import core

from . import BackendFlow, BackendUnavailable, PerPacketBackend, ReceivedPacket, SendFailure
from ._wire import address_bytes, address_text, send_slots, wrap_icmp_message

__all__ = ["PingSocketBackend", "parse_extended_error", "ping_sockets_allowed"]

PING_GROUP_RANGE = "/proc/sys/net/ipv4/ping_group_range"

# Linux constants the socket module does not all export.
_IP_TTL = 2
_IP_RECVERR = 11
_IP_RECVTTL = 12
_IP_MTU_DISCOVER = 10
_IP_PMTUDISC_PROBE = 3
_IPV6_UNICAST_HOPS = 16
_IPV6_MTU_DISCOVER = 23
_IPV6_PMTUDISC_PROBE = 3
_IPV6_RECVERR = 25
_IPV6_RECVHOPLIMIT = 51
_MSG_ERRQUEUE = 0x2000
_SO_EE_ORIGIN_ICMP = 2
_SO_EE_ORIGIN_ICMP6 = 3
_SOL_IP = 0
_SOL_IPV6 = 41
# What an ICMP error leaves pending on a ping socket (ping_err: icmp_err_convert, icmpv6_err_convert).
_PENDING_ERRNOS = frozenset((
    errno_codes.EHOSTUNREACH, errno_codes.ENETUNREACH, errno_codes.EHOSTDOWN, errno_codes.ECONNREFUSED,
    errno_codes.EMSGSIZE, errno_codes.EPROTO, errno_codes.ENOPROTOOPT, errno_codes.EOPNOTSUPP,
    errno_codes.ENONET, errno_codes.EACCES, errno_codes.EREMOTEIO,
))

_ANCILLARY_SIZE = socket.CMSG_SPACE(64) + socket.CMSG_SPACE(8)
_UNSPECIFIED = {4: bytes(4), 6: bytes(16)}
_TIME_EXCEEDED = {4: 11, 6: 3}
# Frag Needed (v4 3/4) and Packet Too Big (v6 2/0) carry the MTU in ee_info.
_MTU_ERRORS = {(4, 3, 4), (6, 2, 0)}


def ping_sockets_allowed() -> tuple[bool, str]:
    """Whether this process may open ping sockets; when not, the reason and the sysctl that fixes it."""
    try:
        with open(PING_GROUP_RANGE) as handle:
            low, high = (int(part) for part in handle.read().split())
    except (OSError, ValueError):
        return False, f"ping sockets are not available here ({PING_GROUP_RANGE} missing)"
    groups = set(os.getgroups()) | {os.getgid(), os.getegid()}
    gid = os.getegid()
    if not any(low <= group <= high for group in groups):
        return False, (
            f"ping sockets are not allowed for this process: net.ipv4.ping_group_range is \"{low} {high}\", "
            f"which does not include its groups ({', '.join(map(str, sorted(groups)))}); allow them with "
            f"`sysctl -w net.ipv4.ping_group_range=\"{gid} {gid}\"` (or \"0 2147483647\" for every group)"
        )
    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP).close()
    except OSError as exc:
        return False, f"ping sockets cannot be opened although ping_group_range allows them: {exc}"
    return True, ""


def parse_extended_error(data: bytes) -> tuple[int, int, int, int, int, bytes | None]:
    """Decode a ``struct sock_extended_err`` with its offender address.

    Returns ``(ee_errno, ee_origin, ee_type, ee_code, ee_info, offender)``;
    ``offender`` is 4 or 16 bytes (SO_EE_OFFENDER), or None when absent.
    """
    if len(data) < 16:
        raise ValueError("sock_extended_err too short")
    ee_errno, origin, icmp_type, icmp_code, _pad, info, _data = struct.unpack_from("=IBBBBII", data)
    offender: bytes | None = None
    if len(data) >= 18:
        family = struct.unpack_from("=H", data, 16)[0]
        if family == socket.AF_INET and len(data) >= 24:
            offender = bytes(data[20:24])
        elif family == socket.AF_INET6 and len(data) >= 40:
            offender = bytes(data[24:40])
    return ee_errno, origin, icmp_type, icmp_code, info, offender


class _PingFlow:
    __slots__ = ("flow", "sock", "fd", "peer_text", "address", "ttl", "kernel_id", "requests")

    def __init__(self, flow: BackendFlow, sock: socket.socket, kernel_id: int, connected: bool, kept: int) -> None:
        self.flow = flow
        self.sock = sock
        self.fd = sock.fileno()
        self.peer_text = address_text(flow.dst)
        # Where each request goes: nowhere to say for a connected socket.
        self.address: tuple[str, int] | tuple[str, int, int, int] | None = None
        if not connected:
            self.address = (self.peer_text, 0) if flow.version == 4 else (self.peer_text, 0, 0, 0)
        self.ttl = -1  # the socket's TTL / hop limit option, -1 until first set
        self.kernel_id = kernel_id
        # (seq, ICMP message as sent, ttl) at seq % kept: what an ICMP error about it must quote.
        self.requests: list[tuple[int, bytes, int] | None] = [None] * kept


class PingSocketBackend(PerPacketBackend):
    """ICMP through Linux ping sockets, one per flow (no privilege needed).

    ``max_kept_requests``: requests remembered per flow to quote in errors (the last ones by
    sequence number);
    ``batch_size``: slots of the send and receive batches.
    """

    name = "ping"

    def __init__(self, *, max_kept_requests: int = 32, batch_size: int = 64) -> None:
        allowed, why_not = ping_sockets_allowed()
        if not allowed:
            raise BackendUnavailable(why_not)
        self._max_kept = max_kept_requests
        self._epoll = select.epoll()
        self._by_fd: dict[int, _PingFlow] = {}
        self._by_flow: dict[BackendFlow, _PingFlow] = {}
        self._queue: list[tuple[_PingFlow, bytes, int]] = []
        self._send = core.PacketBatch(batch_size)
        self._recv = core.PacketBatch(batch_size)
        self._sources = array.array("i", bytes(4 * batch_size))  # recv_many: slot -> index of its socket
        # ICMP errors drained while sending (to clear a pending error), not yet handed out.
        self._drained: list[ReceivedPacket] = []
        self._closed = False

    def open_flow(self, flow: BackendFlow) -> None:
        """Open the flow's ping socket, bound to its echo id (another id if that one is taken) and
        connected to its destination (left unconnected when there is no route yet, so that each
        send reports the error the client is answered with)."""
        if flow.version == 4:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
            options = ((_SOL_IP, _IP_RECVERR, 1), (_SOL_IP, _IP_RECVTTL, 1),
                       (_SOL_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_PROBE))
            any_address = "0.0.0.0"
        else:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6)
            options = ((_SOL_IPV6, _IPV6_RECVERR, 1), (_SOL_IPV6, _IPV6_RECVHOPLIMIT, 1),
                       (_SOL_IPV6, _IPV6_MTU_DISCOVER, _IPV6_PMTUDISC_PROBE))
            any_address = "::"
        try:
            sock.setblocking(False)
            for level, option, value in options:
                sock.setsockopt(level, option, value)
            try:
                sock.bind((any_address, flow.echo_id))
            except OSError as exc:
                if exc.errno != errno_codes.EADDRINUSE:
                    raise
                sock.bind((any_address, 0))  # the kernel picks a free id; replies are mapped back
            kernel_id = sock.getsockname()[1]
            try:
                sock.connect((address_text(flow.dst), 0))
                connected = True
            except OSError:
                connected = False
            self._epoll.register(sock.fileno(), select.EPOLLIN | select.EPOLLERR)
        except BaseException:
            sock.close()
            raise
        state = _PingFlow(flow, sock, kernel_id, connected, self._max_kept)
        self._by_fd[sock.fileno()] = state
        self._by_flow[flow] = state

    def close_flow(self, flow: BackendFlow) -> None:
        """Close the flow's socket."""
        state = self._by_flow.pop(flow, None)
        if state is None:
            return
        fd = state.sock.fileno()
        self._by_fd.pop(fd, None)
        self._epoll.unregister(fd)
        state.sock.close()

    def send_echo(self, flow: BackendFlow, message: bytes | bytearray | memoryview, ttl: int) -> None:
        """Queue a request on the flow's socket (the kernel sets the id and the checksum)."""
        state = self._by_flow[flow]
        self._queue.append((state, bytes(message), ttl))

    def flush(self) -> list[SendFailure]:
        """Send the queued requests, flow by flow (see :meth:`_send_flow`)."""
        queue, self._queue = self._queue, []
        if not queue:
            return []
        by_flow: dict[_PingFlow, list[int]] = {}
        for index, item in enumerate(queue):
            by_flow.setdefault(item[0], []).append(index)
        failures: list[SendFailure] = []
        for state, indices in by_flow.items():
            self._send_flow(state, indices, queue, failures)
        return failures

    def _send_flow(
        self, state: _PingFlow, indices: list[int], queue: list[tuple[_PingFlow, bytes, int]],
        failures: list[SendFailure],
    ) -> None:
        """A flow's requests in order: one sendmmsg per run of equal TTL. The TTL is a socket option
        set when it changes (a flow's TTL rarely does: traceroute's does, once per probe round),
        which is cheaper than a TTL per message, whose ancillary data costs the kernel a lookup."""
        batch, size = self._send, len(self._send)
        run: list[int] = []
        for index in indices:
            _state, message, ttl = queue[index]
            if run and (ttl != state.ttl or len(run) == size):
                self._send_run(state, run, queue, failures)
                run = []
            if ttl != state.ttl:
                try:
                    if state.flow.version == 4:
                        state.sock.setsockopt(_SOL_IP, _IP_TTL, ttl)
                    else:
                        state.sock.setsockopt(_SOL_IPV6, _IPV6_UNICAST_HOPS, ttl)
                except OSError as exc:
                    failures.append(SendFailure(index, exc.errno or 0, 0))
                    continue
                state.ttl = ttl
            batch.set(len(run), message, state.address)
            run.append(index)
        if run:
            self._send_run(state, run, queue, failures)

    def _send_run(
        self, state: _PingFlow, run: list[int], queue: list[tuple[_PingFlow, bytes, int]],
        failures: list[SendFailure],
    ) -> None:
        """Send slots [0, len(run)) of the send batch on the flow's socket, remembering first what
        goes, by sequence number, to quote it in the errors it may cause (a router on a veth may
        answer before the send returns). A slot refused with an error an earlier request's ICMP
        error left pending is sent once more after :meth:`_clear_pending_error`."""
        requests, kept, ttl = state.requests, self._max_kept, state.ttl
        for index in run:
            message = queue[index][1]
            if len(message) >= 8:
                seq = int.from_bytes(message[6:8], "big")
                requests[seq % kept] = (seq, message, ttl)

        def retry(err: int) -> bool:
            if err not in _PENDING_ERRNOS:
                return False
            self._clear_pending_error(state)
            return True

        for slot, err in send_slots(self._send, state.fd, 0, len(run), retry):
            failures.append(SendFailure(run[slot], err, 0))

    def _clear_pending_error(self, state: _PingFlow) -> None:
        """Take every ICMP error off the flow socket's error queue (kept for the proxy: see
        :meth:`received_while_sending`), which leaves no error pending once the queue is empty,
        and clear with SO_ERROR one whose entry the queue had no room for."""
        self._drain_errors(state, self._drained, None)
        try:
            state.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError:  # the socket is going away; the retried send reports it
            pass

    def received_while_sending(self) -> list[ReceivedPacket]:
        """The ICMP errors the last flushes drained from the flow sockets to clear a pending error
        (see the module docstring), rebuilt as :meth:`receive` rebuilds them; each is returned once,
        here or by the next :meth:`receive`."""
        drained, self._drained = self._drained, []
        return drained

    def receive(self, limit: int = 256) -> list[ReceivedPacket]:
        """Replies and errors of every ready flow socket, rebuilt as whole IP packets (stops once
        ``limit`` is reached; one receive batch may take it over by less than a batch).

        The replies of all ready sockets go into one shared batch in one call
        (``PacketBatch.recv_many``, one recvmmsg per socket), so the Python work
        here is per packet, not per socket.
        """
        out, self._drained = self._drained, []
        ready: list[_PingFlow] = []
        for fd, events in self._epoll.poll(0, limit):
            state = self._by_fd.get(fd)
            if state is None:
                continue
            if events & select.EPOLLERR:
                self._drain_errors(state, out, limit)
            if events & select.EPOLLIN:
                ready.append(state)
        batch, sources, size = self._recv, self._sources, len(self._recv)
        fds = [state.fd for state in ready]
        while fds and len(out) < limit:
            count = batch.recv_many(fds, sources)
            for i in range(count):
                state = ready[sources[i]]
                message = batch.data(i)
                if len(message) < 8 or batch.truncated(i):
                    continue
                flow = state.flow
                ttl = batch.ttl(i)
                source = batch.address(i)[0]  # type: ignore[index]
                packet = wrap_icmp_message(flow.dst if source == state.peer_text else address_bytes(source),
                                           bytes(len(flow.dst)), ttl if ttl >= 0 else 64, message)
                if state.kernel_id != flow.echo_id:
                    core.rewrite_echo(packet, echo_id=flow.echo_id)
                out.append(ReceivedPacket(packet, flow))
            if count < size:
                break
            # Full: the last slot's socket may hold more, and the ones after it were not read.
            last = sources[count - 1]
            fds, ready = fds[last:], ready[last:]
        return out

    def _drain_errors(self, state: _PingFlow, out: list[ReceivedPacket], limit: int | None) -> None:
        """Read the flow socket's error queue into ``out`` until it is empty or ``out`` holds
        ``limit`` packets (None: until empty; the queue is bounded by the socket's buffer)."""
        flow = state.flow
        while limit is None or len(out) < limit:
            try:
                quoted, ancillary, _flags, _address = state.sock.recvmsg(65535, _ANCILLARY_SIZE, _MSG_ERRQUEUE)
            except OSError:  # drained (EAGAIN), or the socket is going away: nothing more to read
                return
            for level, kind, data in ancillary:
                if (level, kind) not in ((_SOL_IP, _IP_RECVERR), (_SOL_IPV6, _IPV6_RECVERR)):
                    continue
                try:
                    _errno, origin, icmp_type, icmp_code, info, offender = parse_extended_error(data)
                except ValueError:
                    continue
                if origin not in (_SO_EE_ORIGIN_ICMP, _SO_EE_ORIGIN_ICMP6) or offender is None:
                    continue  # local errors (EMSGSIZE...) were already reported by the send
                packet = self._rebuild_error(state, quoted, offender, icmp_type, icmp_code, info)
                if packet is not None:
                    out.append(ReceivedPacket(packet, flow))

    def _rebuild_error(
        self, state: _PingFlow, quoted: bytes, offender: bytes, icmp_type: int, icmp_code: int, info: int
    ) -> bytes | None:
        """The ICMP error the offender sent, as the client's request would have drawn it."""
        flow = state.flow
        version = flow.version
        if len(quoted) < 8:
            return None
        seq = int.from_bytes(quoted[6:8], "big")
        sent = state.requests[seq % self._max_kept]
        if sent is not None and sent[0] == seq:
            _seq, message, sent_ttl = sent
        else:  # older than what we keep: quote what the router quoted
            message, sent_ttl = quoted, 64
        request = bytearray(message)
        request[4:6] = flow.echo_id.to_bytes(2, "big")
        if version == 4:  # the kernel sent our checksum with its id; ours must match our id
            request[2:4] = b"\0\0"
            request[2:4] = core.internet_checksum(request).to_bytes(2, "big")
        quoted_ttl = 1 if icmp_type == _TIME_EXCEEDED[version] else sent_ttl
        original = wrap_icmp_message(_UNSPECIFIED[version], flow.dst, quoted_ttl, request)
        mtu = info if (version, icmp_type, icmp_code) in _MTU_ERRORS else 0
        return bytes(core.build_icmp_error(offender, original, icmp_type, icmp_code, mtu=mtu))

    def filenos(self) -> list[int]:
        """The epoll descriptor that watches every flow socket."""
        return [self._epoll.fileno()]

    def close(self) -> None:
        """Close every flow socket and the epoll descriptor."""
        if self._closed:
            return
        self._closed = True
        for state in list(self._by_flow.values()):
            self.close_flow(state.flow)
        self._epoll.close()
