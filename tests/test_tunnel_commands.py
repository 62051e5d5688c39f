"""`fastproxy edge` / `fastproxy connector` flags, config files and per-client policy."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastproxy.tunnel.commands import client_policies


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def test_client_tokens_reach_client_allow_and_policies_their_own_prefixes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FP_ALICE", "alice-secret")
    table = client_policies(["bob"], ["env:FP_ALICE=10.0.1.0/24, fd12::/64", "carol=192.0.2.0/24"])
    assert table == {
        "bob": None,
        "alice-secret": (net("10.0.1.0/24"), net("fd12::/64")),
        "carol": (net("192.0.2.0/24"),),
    }


def test_policy_file_reference_applies_to_every_token_in_it(tmp_path: Path) -> None:
    tokens = tmp_path / "team"
    tokens.write_text("# the ops team\nt1\n\nt2\n")
    assert client_policies([], [f"@{tokens}=10.9.0.0/16"]) == {"t1": (net("10.9.0.0/16"),), "t2": (net("10.9.0.0/16"),)}


@pytest.mark.parametrize(
    ("tokens", "policies", "message"),
    [
        ([], [], "no client token"),
        ([], ["no-equals-sign"], "TOKEN=CIDR"),
        ([], ["t=10.0.0.1/8"], "host bits"),
        (["t"], ["t=10.0.0.0/8"], "given twice"),
        ([], ["env:FP_SURELY_UNSET_VARIABLE=10.0.0.0/8"], "FP_SURELY_UNSET_VARIABLE"),
    ],
)
def test_bad_policies_say_what_is_wrong(tokens: list[str], policies: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        client_policies(tokens, policies)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastproxy", *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ))


def test_config_errors_name_the_file_table_and_key(tmp_path: Path) -> None:
    config = tmp_path / "fastproxy.toml"
    config.write_text('[edge]\nlisten = "127.0.0.1:4433"\nconector_token = ["x"]\n')
    result = run("edge", "--config", str(config))
    assert result.returncode == 1
    assert f"{config}: [edge] unknown key 'conector_token' (did you mean 'connector_token'?)" in result.stderr
    config.write_text('[connector]\nedge = "127.0.0.1:4433"\ntoken = "t"\nroute = ["10.0.0.0/8", "10.1.0.1/16"]\n')
    result = run("connector", "--config", str(config), "--insecure")
    assert result.returncode == 1 and "[connector] route: item 1:" in result.stderr


def test_required_settings_come_from_flags_or_file(tmp_path: Path) -> None:
    result = run("connector", "--edge", "127.0.0.1:1", "--token", "t", "--route", "10.0.0.0/8")
    assert result.returncode == 1 and "exactly one of --ca, --pin, --insecure" in result.stderr
    result = run("edge", "--connector-token", "c", "--client-token", "t")
    assert result.returncode == 1 and "--listen is required" in result.stderr


def test_help_has_examples() -> None:
    for command in ("edge", "connector"):
        result = run(command, "--help")
        assert result.returncode == 0 and "examples:" in result.stdout and "--config" in result.stdout


def test_bad_pin_and_unreadable_certificate_files_are_one_line_errors(tmp_path: Path) -> None:
    result = run("connector", "--edge", "127.0.0.1:1", "--token", "t", "--route", "10.0.0.0/8", "--pin", "abc")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "fastproxy connector: --pin: pin is not hexadecimal" in result.stderr
    missing = tmp_path / "missing.pem"
    result = run("connector", "--edge", "127.0.0.1:1", "--token", "t", "--route", "10.0.0.0/8", "--ca", str(missing))
    assert result.returncode == 1 and f"--ca {missing}: cannot read" in result.stderr
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    for cert in (missing, junk):
        result = run("edge", "--listen", "127.0.0.1:0", "--connector-token", "c", "--client-token", "t",
                     "--cert", str(cert), "--key", str(cert))
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert f"fastproxy edge: --cert {cert} / --key {cert}: need a PEM certificate" in result.stderr


def test_connector_policies_use_the_same_table_with_their_own_words() -> None:
    table = client_policies(["k"], ["lab=10.0.0.0/8,fd12::/48"], role="connector")
    assert table == {"k": None, "lab": (net("10.0.0.0/8"), net("fd12::/48"))}
    with pytest.raises(ValueError, match="no connector token: give --connector-token or --connector-policy"):
        client_policies([], [], role="connector")
