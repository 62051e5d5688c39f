"""Living routes over real QUIC on loopback: the edge pushes each client its reachable set
as connectors come, go, re-announce and the configuration changes; fastproxy.Client
follows it (prefixes, on_routes, wait_for_route); old peers keep version-1 behaviour."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from fastproxy.tunnel import edge as edge_module
from fastproxy.tunnel.client import Client, NoRouteError
from fastproxy.tunnel.connector import Connector
from fastproxy.tunnel.control import ControlDecoder, MalformedControlMessage, RouteUpdate
from fastproxy.tunnel.dial import TunnelRejected, dial
from fastproxy.tunnel.edge import EdgeConfig
from tests.tunnel_support import (
    CLIENT_TOKEN,
    CONNECTOR_TOKEN,
    networks,
    pin_trust,
    run,
    running_edge,
    udp_echo_server,
    wait_for,
)


def make_connector(edge: object, *routes: str, token: str = CONNECTOR_TOKEN) -> Connector:
    return Connector("127.0.0.1", edge.port, token=token, routes=networks(*routes), trust=pin_trust(),  # type: ignore[attr-defined]
                     backoff_initial=0.05, backoff_max=0.2)


def make_client(edge: object, token: str = CLIENT_TOKEN, **kwargs: object) -> Client:
    return Client(("127.0.0.1", edge.port), token, pin_trust(), backoff_initial=0.05, backoff_max=0.2,  # type: ignore[attr-defined]
                  **kwargs)  # type: ignore[arg-type]


def test_a_client_connected_first_learns_every_announce_and_withdrawal() -> None:
    async def body() -> None:
        changes: list[tuple[object, object]] = []
        async with running_edge() as edge, udp_echo_server() as (_echo, port):
            async with make_client(edge, on_routes=lambda old, new: changes.append((old, new))) as client:
                assert client.prefixes == () and client.control_version == 2
                with pytest.raises(NoRouteError, match=r"no route to 127\.0\.0\.1 .*allows this client nothing"):
                    await client.wait_for_route("127.0.0.1", 0.2)
                waiter = asyncio.ensure_future(client.wait_for_route("127.0.0.1", 5))
                first = make_connector(edge, "127.0.0.0/8")
                await first.start()
                assert await waiter == ipaddress.ip_network("127.0.0.0/8")
                assert client.prefixes == networks("127.0.0.0/8")
                session = await client.open_udp("127.0.0.1", port)  # traffic goes as soon as the route came
                session.send(b"hi")
                assert await session.receive(timeout=3) == b"echo:hi"
                # A second connector with more prefixes: added.
                second = make_connector(edge, "127.0.0.0/8", "::1/128")
                await second.start()
                await wait_for(lambda: client.prefixes == networks("127.0.0.0/8", "::1/128"))
                # The first leaves: the second still serves 127/8 (failover), nothing changes.
                count = len(changes)
                await first.close()
                await wait_for(lambda: edge.router.connector_count == 1)
                await asyncio.sleep(0.2)
                assert len(changes) == count
                # The second leaves: everything is withdrawn.
                await second.close()
                await wait_for(lambda: client.prefixes == ())
                assert changes[-1] == (networks("127.0.0.0/8", "::1/128"), ())
                assert edge.stats["route_updates_sent"] == 3
                from prometheus_client import generate_latest

                from fastproxy.metrics import create_registry

                assert "fastproxy_route_updates_total 3.0" in generate_latest(create_registry(edge=edge)).decode()

    run(body)


def test_a_connector_reannounce_replaces_its_prefixes_and_reaches_clients() -> None:
    async def body() -> None:
        async with running_edge() as edge:
            connector = make_connector(edge, "127.0.0.0/8")
            await connector.start()
            await asyncio.wait_for(connector.connected.wait(), 5)
            async with make_client(edge) as client:
                assert client.prefixes == networks("127.0.0.0/8")
                conn_id = connector.conn_id
                connector.update_routes(networks("127.0.0.0/16", "::1/128"))
                await wait_for(lambda: client.prefixes == networks("127.0.0.0/16", "::1/128"))
                assert connector.conn_id == conn_id  # the same connection
                await wait_for(lambda: connector.stats["announces_accepted"] == 1)
                assert edge.router.connectors_for(ipaddress.ip_address("127.1.0.1").packed) == []
            await connector.close()

    run(body)


def test_reconfigure_revokes_a_token_and_pushes_a_changed_policy() -> None:
    async def body() -> None:
        tokens = {CLIENT_TOKEN: None, "other-client": None}
        async with running_edge(client_tokens=tokens) as edge:
            connector = make_connector(edge, "127.0.0.0/8", "::1/128")
            await connector.start()
            await asyncio.wait_for(connector.connected.wait(), 5)
            async with make_client(edge) as kept, make_client(edge, "other-client") as revoked:
                address = kept.address_v4
                closed = asyncio.get_running_loop().create_future()
                revoked._connection.on_closed = lambda _c, code, reason: closed.set_result(reason)  # type: ignore[union-attr]
                edge.reconfigure(EdgeConfig(client_tokens={CLIENT_TOKEN: networks("127.0.0.0/16")},
                                            connector_tokens=(CONNECTOR_TOKEN,)))
                assert "no longer accepts this client's token" in await asyncio.wait_for(closed, 5)
                await wait_for(lambda: kept.prefixes == networks("127.0.0.0/16"))
                assert kept.connected.is_set() and kept.address_v4 == address
                assert edge.stats["connections_revoked"] == 1
                with pytest.raises(TunnelRejected, match="bad token"):
                    await dial("127.0.0.1", edge.port, trust=pin_trust(), role="client", token="other-client")
            await connector.close()

    run(body)


def test_a_version_1_client_gets_the_old_welcome_and_no_route_updates() -> None:
    async def body() -> None:
        async with running_edge(client_tokens={CLIENT_TOKEN: networks("127.0.0.0/8")}) as edge:
            messages: list[object] = []
            connection, welcome = await dial("127.0.0.1", edge.port, trust=pin_trust(), role="client",
                                             token=CLIENT_TOKEN, on_message=messages.append, version=1)
            assert welcome.version == 1 and welcome.prefixes == networks("127.0.0.0/8")  # its policy, as before
            connector = make_connector(edge, "127.0.0.0/8")
            await connector.start()
            await asyncio.wait_for(connector.connected.wait(), 5)
            await asyncio.sleep(0.3)
            assert messages == [] and not connection.is_closed
            await connector.close()
            connection.close()

    run(body)


class _Version1Decoder(ControlDecoder):
    """What an edge of control protocol version 1 did with any frame not of version 1."""

    def feed(self, data: bytes) -> list[object]:  # type: ignore[override]
        if len(data) >= 3 and data[2] != 1:
            raise MalformedControlMessage("unsupported_version", f"version {data[2]}, expected 1")
        return super().feed(data)  # type: ignore[return-value]


def test_a_new_client_and_connector_fall_back_to_version_1_with_an_old_edge(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(edge_module, "ControlDecoder", _Version1Decoder)

    async def body() -> None:
        async with running_edge() as edge:
            connector = make_connector(edge, "127.0.0.0/8")
            await connector.start()
            await asyncio.wait_for(connector.connected.wait(), 5)
            assert connector.control_version == 1
            async with make_client(edge) as client:
                assert client.control_version == 1 and client.prefixes == networks("127.0.0.0/8")
                assert edge.router.auth_failures["control_unsupported_version"] == 2
                # A version-1 edge cannot take a re-announce: the connector reconnects to announce.
                conn_id = connector.conn_id
                connector.update_routes(networks("127.0.0.0/16"))
                await wait_for(lambda: connector.conn_id > conn_id and connector.connected.is_set(), 5)
                # The edge forgets the old connection once its close completes.
                await wait_for(lambda: edge.router.connectors_for(ipaddress.ip_address("127.1.0.1").packed) == [], 5)
                assert edge.router.connectors_for(ipaddress.ip_address("127.0.0.1").packed) != []
            await connector.close()

    run(body)


def test_route_update_before_the_welcome_is_applied_is_not_lost() -> None:
    """A RouteUpdate right behind the WELCOME (dial has not returned yet) wins over the welcome's set."""
    async def body() -> None:
        async with running_edge() as edge:
            original = edge_module.Edge._on_control

            def on_control(self: edge_module.Edge, connection: object, data: bytes) -> None:
                original(self, connection, data)
                conn_id = connection.conn_id  # type: ignore[attr-defined]
                if self.router.is_client(conn_id) and not getattr(connection, "pushed", False):
                    connection.pushed = True  # type: ignore[attr-defined]
                    self.router._route_updates[conn_id] = RouteUpdate(networks("10.9.0.0/16"))
                    self._push_routes()

            edge_module.Edge._on_control = on_control  # type: ignore[method-assign]
            try:
                async with make_client(edge) as client:
                    assert client.prefixes == networks("10.9.0.0/16")
            finally:
                edge_module.Edge._on_control = original  # type: ignore[method-assign]

    run(body)


def test_builtin_tools_wait_for_a_route_then_give_up_with_what_the_edge_allows(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from fastproxy.client import tools

    monkeypatch.setattr(tools, "_ROUTE_WAIT", 0.3)

    async def body() -> None:
        async with running_edge() as edge, make_client(edge) as client:
            out = io.StringIO()
            assert await tools.ping(client, "127.0.0.1", count=1, out=out) == tools.EXIT_ERROR
            assert out.getvalue().startswith("fastproxy ping: no route to 127.0.0.1 through the tunnel after 0.3 s: "
                                             "the edge allows this client nothing"), out.getvalue()
            out = io.StringIO()
            assert await tools.traceroute(client, "::1", out=out) == tools.EXIT_ERROR
            assert "fastproxy traceroute: no route to ::1" in out.getvalue()
            assert client.stats["packets_in"] == 0 and client.drops["not_connected"] == 0

    run(body)
