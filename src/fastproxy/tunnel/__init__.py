"""The tunnel: QUIC transport, control stream, edge routing, connector UDP sessions."""
