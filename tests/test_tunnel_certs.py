"""Certificates and dial errors as users meet them: real ``fastproxy edge`` / ``connector``
/ ``ping`` / ``forward-udp`` processes on loopback, certificates made by ``openssl req`` and
by ``cryptography``; every failure is one line on stderr, never a traceback or an
unretrieved future."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fastproxy.errors import CertificateRejected, DialError, EdgeUnreachable, HandshakeFailed
from fastproxy.tunnel import quic
from fastproxy.tunnel.certs import certificate_fingerprint, generate_self_signed
from fastproxy.tunnel.dial import dial
from tests.conftest import require_root
from tests.tunnel_support import CLIENT_TOKEN, certificate, free_udp_port, run, running_edge

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = dict(os.environ, PYTHONPATH=SRC)
CONNECTOR_TOKEN = "connector-token-0123456789"
CLIENT_TOKEN_CLI = "client-token-0123456789ab"
BAD_OUTPUT = ("Traceback", "Future exception was never retrieved", "Task exception was never retrieved")


# -- certificates ---------------------------------------------------------------------------


def _write_pair(directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    cert_file, key_file = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


def _certificate(
    subject: str, *, sans: list[x509.GeneralName], days: tuple[float, float] = (-1, 30), ca: bool = False,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate valid from ``days[0]`` to ``days[1]`` days from now, self-signed unless
    ``issuer`` (a CA certificate and its key) signs it."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder().subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=days[0]))
        .not_valid_after(now + datetime.timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256()), key


LOOPBACK = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]


# -- processes --------------------------------------------------------------------------------


class Proc:
    """A fastproxy process whose stderr is collected by a thread (readable at any time)."""

    def __init__(self, *args: str) -> None:
        self.popen = subprocess.Popen([sys.executable, "-m", "fastproxy", *args], stderr=subprocess.PIPE,
                                      stdout=subprocess.DEVNULL, text=True, env=ENV)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 20.0, after: int = 0) -> re.Match[str]:
        """The first line from index ``after`` on that matches ``pattern``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[after:]:
                match = re.search(pattern, line)
                if match:
                    return match
            if self.popen.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} in:\n{self.text}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._reader.join(5)
        return self.popen.returncode


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop()


def start_edge(procs: list[Proc], port: int, *extra: str, wait: bool = True) -> Proc:
    edge = Proc("edge", "--listen", f"127.0.0.1:{port}", "--client-token", CLIENT_TOKEN_CLI,
                "--connector-token", CONNECTOR_TOKEN, *extra)
    procs.append(edge)
    if wait:
        edge.wait_for("edge listening")
    return edge


def fastproxy(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastproxy", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def fastproxy_all(commands: list[list[str]], timeout: float = 60) -> list[subprocess.CompletedProcess[str]]:
    """Run these fastproxy commands at once (the suite stays fast); their results in order."""
    started = [subprocess.Popen([sys.executable, "-m", "fastproxy", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=ENV) for args in commands]
    results = []
    for args, proc in zip(commands, started):
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return results


def assert_one_clean_line(stderr: str) -> str:
    """stderr is exactly one line with no traceback or unretrieved future; returns it."""
    for bad in BAD_OUTPUT:
        assert bad not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def ping_args(port: int, *trust: str) -> list[str]:
    return ["ping", "--edge", f"127.0.0.1:{port}", "--token", CLIENT_TOKEN_CLI, *trust, "-c", "1", "-W", "5",
            "127.0.0.1"]


def ping_once(port: int, *trust: str) -> subprocess.CompletedProcess[str]:
    return fastproxy(*ping_args(port, *trust))


# -- the common self-signed case -----------------------------------------------------------


@pytest.mark.privileged
def test_openssl_self_signed_certificate_works_as_its_own_ca(tmp_path: Path, procs: list[Proc]) -> None:
    require_root("the connector's raw-socket ICMP backend")
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed (scripts/bootstrap.sh --test installs it)"
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "30", "-subj", "/CN=edge",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=30)
    assert x509.load_pem_x509_certificate(cert.read_bytes()).extensions.get_extension_for_class(
        x509.BasicConstraints).value.ca  # what users get: CA:TRUE
    port = free_udp_port()
    start_edge(procs, port, "--cert", str(cert), "--key", str(key))
    connector = Proc("connector", "--edge", f"127.0.0.1:{port}", "--token", CONNECTOR_TOKEN, "--route", "127.0.0.0/8",
                     "--ca", str(cert), "--backend", "raw")
    procs.append(connector)
    connector.wait_for("connected to the edge")
    result = ping_once(port, "--ca", str(cert))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 packets transmitted, 1 received" in result.stdout
    for bad in BAD_OUTPUT:
        assert bad not in connector.text + result.stderr


# -- each certificate failure: one line --------------------------------------------------------


def test_certificate_failures_are_one_line_each(tmp_path: Path, procs: list[Proc]) -> None:
    ca = _certificate("Site CA", sans=[], ca=True)
    other_ca = _certificate("Site CA", sans=[], ca=True)  # same name, another key: still unknown
    leaf = _certificate("edge", sans=LOOPBACK, issuer=ca)
    no_san = _certificate("edge", sans=[x509.DNSName("edge.internal")])
    expired = _certificate("edge", sans=LOOPBACK, days=(-30, -1))
    for name, pair in {"ca": ca, "other-ca": other_ca}.items():
        _write_pair(tmp_path, name, *pair)
    leaf_pem = leaf[0].public_bytes(serialization.Encoding.PEM)
    cases = [
        (leaf, ["--pin", "ab" * 32],
         rf"does not match --pin: expected SHA-256 (ab:){{31}}ab, the edge presented "
         rf"{certificate_fingerprint(leaf_pem)}"),
        (leaf, ["--ca", str(tmp_path / "other-ca-cert.pem")],
         r"the edge's certificate \(CN=edge\) is signed by an unknown CA \(CN=Site CA\) that is not in --ca "
         r".*other-ca-cert.pem.*or trust the edge by --pin"),
        (no_san, ["--ca", "SELF"],
         r"the edge's certificate \(CN=edge\) is not valid for 127\.0\.0\.1, the name dialled: its "
         r"subjectAltName holds DNS:edge\.internal; .*subjectAltName=IP:127\.0\.0\.1"),
        (expired, ["--ca", "SELF"],
         r"the edge's certificate \(CN=edge\) expired on \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(valid from .* to "
         r".* UTC, now .*\): renew it on the edge"),
    ]
    pings, edges = [], []
    for index, ((cert, key), trust, _) in enumerate(cases):
        cert_file, key_file = _write_pair(tmp_path, f"edge{index}", cert, key)
        port = free_udp_port()
        edges.append((port, start_edge(procs, port, "--cert", cert_file, "--key", key_file, wait=False)))
        pings.append(ping_args(port, *[cert_file if value == "SELF" else value for value in trust]))
    # The chain to a known CA is accepted, of course: past the certificate, the edge refuses the token.
    cert_file, key_file = _write_pair(tmp_path, "good", *leaf)
    port = free_udp_port()
    edges.append((port, start_edge(procs, port, "--cert", cert_file, "--key", key_file, wait=False)))
    pings.append(["ping", "--edge", f"127.0.0.1:{port}", "--token", "wrong-token-0123456789",
                  "--ca", str(tmp_path / "ca-cert.pem"), "-c", "1", "127.0.0.1"])
    for _, edge in edges:
        edge.wait_for("edge listening")
    results = fastproxy_all(pings)
    for (port, _), result, (_, _, message) in zip(edges, results, cases):
        assert result.returncode == 2, result.stdout + result.stderr
        line = assert_one_clean_line(result.stderr)
        assert line.startswith(f"fastproxy ping: edge 127.0.0.1:{port}: the edge's certificate"), line
        assert re.search(message, line), line
    line = assert_one_clean_line(results[-1].stderr)
    assert "edge refused the connection" in line and "token" in line, (line, edges[-1][1].text)


@pytest.mark.privileged
def test_connector_logs_the_certificate_problem_without_stray_futures(tmp_path: Path, procs: list[Proc]) -> None:
    require_root("the connector's raw-socket ICMP backend")
    pair = generate_self_signed(str(tmp_path))
    port = free_udp_port()
    start_edge(procs, port, "--cert", pair.cert_file, "--key", pair.key_file)
    connector = Proc("connector", "--edge", f"127.0.0.1:{port}", "--token", CONNECTOR_TOKEN, "--route",
                     "127.0.0.0/8", "--pin", "cd" * 32, "--backend", "raw")
    procs.append(connector)
    connector.wait_for(rf"cannot connect to the edge 127\.0\.0\.1:{port}: the edge's certificate does not match "
                       rf"--pin: expected SHA-256 (cd:){{31}}cd, the edge presented {pair.fingerprint}")
    connector.wait_for("cannot connect", after=len(connector.lines))  # it retried
    assert connector.stop() == 0
    assert connector.lines[-1].rstrip().endswith("connector stopping (SIGTERM)")
    for bad in BAD_OUTPUT:
        assert bad not in connector.text, connector.text


def test_edge_down_is_one_line_naming_it(tmp_path: Path) -> None:
    port = free_udp_port()
    result = ping_once(port, "--pin", "ab" * 32)
    assert result.returncode == 2
    line = assert_one_clean_line(result.stderr)
    assert re.fullmatch(rf"fastproxy ping: edge 127\.0\.0\.1:{port}: (no answer within \d+ s|unreachable): .*", line)
    assert "Idle timeout" not in line and "refused" not in line


# -- the library: specific exceptions with messages ------------------------------------------


def test_dial_raises_specific_exceptions_with_messages() -> None:
    async def body() -> None:
        async with running_edge() as edge:
            with pytest.raises(CertificateRejected, match="does not match --pin") as info:
                await dial("127.0.0.1", edge.port, trust=quic.Trust(pin="00" * 32), role="client", token=CLIENT_TOKEN)
            assert isinstance(info.value, ConnectionError) and isinstance(info.value, DialError)
            with pytest.raises(CertificateRejected, match="self-signed and is not in --ca"):
                other = generate_self_signed()
                await dial("127.0.0.1", edge.port, trust=quic.Trust(cafile=other.cert_file), role="client",
                           token=CLIENT_TOKEN)
            # The edge's own certificate as the bundle: trusted, though it is no CA.
            connection, _ = await dial("127.0.0.1", edge.port, trust=quic.Trust(cafile=certificate().cert_file),
                                       role="client", token=CLIENT_TOKEN)
            connection.close()
        with pytest.raises(EdgeUnreachable, match="no answer within|unreachable") as down:
            await dial("127.0.0.1", free_udp_port(), trust=quic.Trust(insecure=True), role="client",
                       token=CLIENT_TOKEN, timeout=1.5)
        assert isinstance(down.value, TimeoutError)

    run(body, timeout=30)


def test_alpn_mismatch_says_it_is_not_a_fastproxy_edge(caplog: pytest.LogCaptureFixture) -> None:
    from qh3.asyncio.server import serve
    from qh3.quic.configuration import QuicConfiguration

    async def body() -> None:
        cert = certificate()
        configuration = QuicConfiguration(is_client=False, alpn_protocols=["h3"])
        configuration.load_cert_chain(cert.cert_file, cert.key_file)
        server = await serve("127.0.0.1", 0, configuration=configuration)
        port = server._transport.get_extra_info("sockname")[1]
        try:
            with pytest.raises(HandshakeFailed, match="not a fastproxy edge: it refused the TLS ALPN protocol"):
                await quic.connect("127.0.0.1", port, trust=quic.Trust(pin=cert.fingerprint), timeout=5)
        finally:
            server.close()
        await asyncio.sleep(0.1)

    import gc

    with caplog.at_level("ERROR", logger="asyncio"):
        run(body)
        gc.collect()
    assert "never retrieved" not in caplog.text


# -- the edge's identity in its state directory ---------------------------------------------------


class UdpEcho:
    """A UDP echo server on 127.0.0.1 in a thread."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(2048)
            except OSError:
                continue
            self.sock.sendto(data, peer)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def _echo_through(local_port: int, timeout: float = 25.0) -> bytes:
    """Send through forward-udp until an answer comes back (the tunnel may be reconnecting)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.sendto(b"hello through the tunnel", ("127.0.0.1", local_port))
            try:
                return sock.recv(2048)
            except OSError:
                continue
    raise AssertionError("no echo through the tunnel")


@pytest.mark.privileged
def test_state_dir_keeps_the_pin_across_a_restart(tmp_path: Path, procs: list[Proc]) -> None:
    require_root("the connector's raw-socket ICMP backend")
    state = tmp_path / "state" / "fastproxy"
    port = free_udp_port()
    edge = start_edge(procs, port, "--state-dir", str(state))
    made = edge.wait_for(r"made a new self-signed certificate kept in (\S+); connectors and clients pin it with "
                         r"--pin ([0-9a-f:]{95})")
    assert made.group(1) == str(state)
    pin = made.group(2)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "edge-key.pem").stat().st_mode) == 0o600
    echo = UdpEcho()
    try:
        connector = Proc("connector", "--edge", f"127.0.0.1:{port}", "--token", CONNECTOR_TOKEN, "--route",
                         "127.0.0.0/8", "--pin", pin, "--backend", "raw")
        procs.append(connector)
        connector.wait_for("connected to the edge")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            local_port = probe.getsockname()[1]
        client = Proc("forward-udp", "--edge", f"127.0.0.1:{port}", "--token", CLIENT_TOKEN_CLI, "--pin", pin,
                      f"127.0.0.1:{local_port}=127.0.0.1:{echo.port}")
        procs.append(client)
        client.wait_for("forwarding udp")
        assert _echo_through(local_port) == b"hello through the tunnel"

        assert edge.stop() == 0
        assert "edge stopping (SIGTERM)" in edge.text
        connected_before = len(connector.lines)
        edge = start_edge(procs, port, "--state-dir", str(state))
        edge.wait_for(rf"reusing the self-signed certificate kept in {re.escape(str(state))}; connectors and "
                      rf"clients pin it with --pin {pin}")
        connector.wait_for("connected to the edge", timeout=30, after=connected_before)
        assert _echo_through(local_port) == b"hello through the tunnel"
        for proc in (edge, connector, client):
            for bad in BAD_OUTPUT:
                assert bad not in proc.text, proc.text
        assert client.stop(signal.SIGINT) == 0
        assert "forward-udp stopping (SIGINT)" in client.text
    finally:
        echo.close()


def _edge_args(*extra: str) -> list[str]:
    return ["edge", "--listen", "127.0.0.1:0", "--client-token", CLIENT_TOKEN_CLI, "--connector-token",
            CONNECTOR_TOKEN, *extra]


def test_unusable_state_dir_is_one_line_naming_the_path_and_fix(tmp_path: Path) -> None:
    state = tmp_path / "state"
    generate_self_signed(str(state.parent))  # the files, then moved into place
    state.mkdir(mode=0o700)
    (tmp_path / "edge-cert.pem").rename(state / "edge-cert.pem")
    key = state / "edge-key.pem"
    (tmp_path / "edge-key.pem").rename(key)
    key.chmod(0o644)
    result = fastproxy(*_edge_args("--state-dir", str(state)))
    line = assert_one_clean_line(result.stderr)
    assert result.returncode == 1
    assert line == (f"fastproxy edge: {key}: the edge's private key is readable by group or others (mode 0644); "
                    f"run: chmod 600 {key}")
    key.chmod(0o600)
    key.write_text("-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    result = fastproxy(*_edge_args("--state-dir", str(state)))
    line = assert_one_clean_line(result.stderr)
    assert result.returncode == 1 and f"state directory {state}: the edge's certificate or key is unreadable or " \
        "corrupt" in line and "remove both to make a new identity" in line
    key.unlink()
    result = fastproxy(*_edge_args("--state-dir", str(state)))
    line = assert_one_clean_line(result.stderr)
    assert f"holds {state / 'edge-cert.pem'} but not {key}" in line
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = fastproxy(*_edge_args("--state-dir", str(blocker / "state")))
    line = assert_one_clean_line(result.stderr)
    assert result.returncode == 1 and f"state directory {blocker / 'state'}: cannot create it: Not a directory" in line


def test_library_edge_stays_ephemeral_without_a_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    from fastproxy.tunnel.edge import Edge, EdgeConfig

    config = EdgeConfig(client_tokens={CLIENT_TOKEN: None}, connector_tokens=("k" * 16,))
    first, second = Edge(config), Edge(config)
    assert first.fingerprint != second.fingerprint and not list(tmp_path.iterdir())
    kept = Edge(config, state_dir=str(tmp_path / "kept"))
    assert kept.identity_created and Edge(config, state_dir=str(tmp_path / "kept")).fingerprint == kept.fingerprint


# -- refusing to start ---------------------------------------------------------------------------


def test_edge_refuses_a_key_that_is_not_the_certificates(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one, two = generate_self_signed(str(tmp_path / "one")), generate_self_signed(str(tmp_path / "two"))
    result = fastproxy(*_edge_args("--cert", one.cert_file, "--key", two.key_file))
    assert result.returncode == 1
    line = assert_one_clean_line(result.stderr)
    assert line == (f"fastproxy edge: --key {two.key_file} is not the private key of --cert {one.cert_file} (their "
                    "public keys differ): give the key that was made with that certificate")


def test_edge_refuses_a_taken_metrics_port_and_warns_on_short_tokens(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = fastproxy("edge", "--listen", "127.0.0.1:0", "--client-token", "short", "--connector-token",
                           "also-short", "--state-dir", str(tmp_path / "state"), "--metrics", f"127.0.0.1:{port}")
    assert result.returncode == 1
    for bad in BAD_OUTPUT:
        assert bad not in result.stderr
    assert "2 token(s) shorter than 16 bytes" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"fastproxy edge: --metrics 127.0.0.1:{port}: cannot listen: Address already in use (another process on "
        "that port? choose another)")
    assert "edge listening" not in result.stderr


# -- settings errors name the flag or the config key -----------------------------------------------


def test_settings_errors_name_the_flag_or_the_config_key(tmp_path: Path) -> None:
    env = "FP_CERTS_TEST_UNSET_VARIABLE"
    os.environ.pop(env, None)
    config = tmp_path / "fastproxy.toml"
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one, two = generate_self_signed(str(tmp_path / "one")), generate_self_signed(str(tmp_path / "two"))
    cases: list[tuple[list[str], str, str]] = [
        (["edge", "--config", str(config)],
         f'[edge]\nlisten = "127.0.0.1:0"\nconnector_token = ["{CONNECTOR_TOKEN}"]\nclient_token = ["{CLIENT_TOKEN_CLI}"]\ncert = "{one.cert_file}"\n'
         f'key = "{two.key_file}"\n',
         f"fastproxy edge: {config}: [edge] key {two.key_file} is not the private key of {config}: [edge] cert "
         f"{one.cert_file} (their public keys differ)"),
        (["edge", "--listen", "127.0.0.1:0", "--client-token", CLIENT_TOKEN_CLI, "--connector-token", f"env:{env}"],
         "", f"fastproxy edge: --connector-token env:{env}: environment variable {env} is not set or empty"),
        (["edge", "--config", str(config)],
         f'[edge]\nlisten = "127.0.0.1:0"\nclient_token = ["{CLIENT_TOKEN_CLI}"]\nconnector_token = ["env:{env}"]\n',
         f"fastproxy edge: {config}: [edge] connector_token env:{env}: environment variable {env} is not set or empty"),
        (["edge", "--config", str(config)],
         f'[edge]\nlisten = "127.0.0.1:0"\nclient_token = ["@{tmp_path}/missing"]\nconnector_token = ["k"]\n',
         f"fastproxy edge: {config}: [edge] client_token @{tmp_path}/missing: cannot read the token file: "
         "No such file or directory"),
        (["edge", "--config", str(config)], '[edge]\nlisten = "127.0.0.1:70000"\nconnector_token = ["k"]\n',
         f"fastproxy edge: {config}: [edge] listen: port 70000 is out of range (0-65535) in '127.0.0.1:70000'"),
        (["edge", "--config", str(config)],
         '[edge]\nlisten = "127.0.0.1:0"\nconnector_token = ["k"]\nmax_connections_per_token = -1\n',
         f"fastproxy edge: {config}: [edge] max_connections_per_token: must be 0 or more, got -1"),
        (["edge", "--listen", "127.0.0.1:0", "--client-token", "t", "--connector-token", "k",
          "--max-connections-per-token", "-5"], "",
         "fastproxy edge: --max-connections-per-token must be 0 or more, got -5"),
        (["edge", "--listen", "127.0.0.1:0", "--client-token", "same-token-0123456789", "--connector-token",
          "same-token-0123456789"], "",
         "fastproxy edge: the same token is given for connectors (connector_token / connector_policy) and clients "
         "(client_token / client_policy): give each role its own"),
        (["ping", "--edge", "127.0.0.1:9", "--token", f"env:{env}", "--insecure", "127.0.0.1"], "",
         f"fastproxy ping: --token env:{env}: environment variable {env} is not set or empty"),
        (["ping", "--config", str(config), "127.0.0.1"],
         f'[client]\nedge = "127.0.0.1:9"\ntoken = "env:{env}"\ninsecure = true\n',
         f"fastproxy ping: {config}: [client] token env:{env}: environment variable {env} is not set or empty"),
        (["ping", "--edge", "127.0.0.1:9", "--token", "t", "--ca", str(config), "127.0.0.1"], "x = 1\n",
         f"fastproxy ping: --ca {config}: holds no PEM certificate"),
    ]
    commands = []
    for index, (args, text, _) in enumerate(cases):
        if text:  # each case its own config file, so they can run at once
            own = tmp_path / f"fastproxy-{index}.toml"
            own.write_text(text)
            args = [str(own) if arg == str(config) else arg for arg in args]
        commands.append(args)
    for index, ((args, text, expected), result) in enumerate(zip(cases, fastproxy_all(commands))):
        if text:
            expected = expected.replace(str(config), str(tmp_path / f"fastproxy-{index}.toml"))
        assert result.returncode in (1, 2), (args, result.stderr)
        line = assert_one_clean_line(result.stderr)
        assert line.startswith(expected), (line, expected)
    result = fastproxy("edge", "--listen", "127.0.0.1:70000")
    assert result.returncode == 2 and "port 70000 is out of range (0-65535)" in result.stderr


# -- the bundle check itself (no processes) ---------------------------------------------------------


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def test_bundle_check_names_each_problem(tmp_path: Path) -> None:
    from fastproxy.tunnel.certs import verify_with_bundle

    ca = _certificate("Site CA", sans=[], ca=True)
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    wildcard = _certificate("edge", sans=[x509.DNSName("*.example.net")], issuer=ca)
    verify_with_bundle(_der(wildcard[0]), [], str(bundle), "gw.example.net")
    with pytest.raises(CertificateRejected, match=r"not valid for a\.gw\.example\.net, the name dialled: its "
                       r"subjectAltName holds DNS:\*\.example\.net"):
        verify_with_bundle(_der(wildcard[0]), [], str(bundle), "a.gw.example.net")
    early = _certificate("edge", sans=LOOPBACK, days=(2, 30), issuer=ca)
    with pytest.raises(CertificateRejected, match=r"is not valid yet \(valid from .* UTC, now .*\): check the "
                       "clocks of this host and of the edge"):
        verify_with_bundle(_der(early[0]), [], str(bundle), "127.0.0.1")
    ca_as_leaf = _certificate("edge", sans=LOOPBACK, ca=True, issuer=ca)
    with pytest.raises(CertificateRejected, match=r"is a CA certificate \(basicConstraints CA:TRUE\) used as the "
                       r"server's: issue the edge a leaf certificate with CA:FALSE, or put this very certificate"):
        verify_with_bundle(_der(ca_as_leaf[0]), [], str(bundle), "127.0.0.1")
    bundle.write_bytes(bundle.read_bytes() + ca_as_leaf[0].public_bytes(serialization.Encoding.PEM))
    verify_with_bundle(_der(ca_as_leaf[0]), [], str(bundle), "127.0.0.1")  # the very certificate: trusted
    no_san = _certificate("edge", sans=[], issuer=ca)
    with pytest.raises(CertificateRejected, match="not valid for ::1, the name dialled: it has no subjectAltName"):
        verify_with_bundle(_der(no_san[0]), [], str(bundle), "::1")
