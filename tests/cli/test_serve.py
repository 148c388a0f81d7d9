"""``tunelab serve`` beyond loopback: a real server speaks HTTPS with a certificate given by
--ssl-certfile/--ssl-keyfile, and binding any other host without TLS warns that keys travel in
clear text."""

import datetime
import ipaddress
import os
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from support import free_port
from typer.testing import CliRunner

WT = Path(__file__).resolve().parents[2]
CLEAR_TEXT = "travel in clear text"


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (and localhost) with its key, as PEM files."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl CLI is installed")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-keyout", str(key),
             "-out", str(cert), "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
            check=True, capture_output=True,
        )  # fmt: skip
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


def test_a_real_server_answers_https_with_the_given_certificate(tmp_path, tunelab_home):
    from tunelab.auth import create_key
    from tunelab.services import open_services

    cert, key = self_signed(tmp_path)
    api_key = create_key(open_services().db, "tls", "inference").secret
    port = free_port()
    env = {**os.environ, "TUNELAB_HOME": str(tunelab_home), "PYTHONPATH": str(WT)}
    for name in ("TUNELAB_DATABASE_URL", "TUNELAB_ARTIFACTS_URL"):
        env.pop(name, None)  # the server opens the same home the key was made in
    server = subprocess.Popen(
        [sys.executable, "-m", "tunelab", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--no-worker", "--preload", "", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    trusted = ssl.create_default_context(cafile=str(cert))
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(f"https://127.0.0.1:{port}/health", verify=trusted)
                break
            except httpx.ConnectError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"server did not start: {server.communicate()}") from None
                time.sleep(0.3)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        me = httpx.get(
            f"https://127.0.0.1:{port}/v1/keys/me",
            headers={"Authorization": f"Bearer {api_key}"},
            verify=trusted,
        )
        assert me.status_code == 200 and me.json()["scope"] == "inference"
        # Clear text is not served on the TLS port.
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).raise_for_status()
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    assert f"https://127.0.0.1:{port}" in stderr
    assert CLEAR_TEXT not in stderr  # loopback: nothing to warn about


@pytest.fixture
def fake_uvicorn(monkeypatch):
    """``tunelab serve`` up to the point it starts uvicorn, recording what it would start."""
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append(kwargs))
    return calls


def serve(*args: str):
    from tunelab.cli import app

    return CliRunner().invoke(app, ["serve", "--no-worker", "--preload", "", *args])


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "tunelab.example.org"])
def test_a_non_loopback_host_without_tls_warns(fake_uvicorn, host):
    result = serve("--host", host)
    assert result.exit_code == 0, result.output
    assert CLEAR_TEXT in " ".join(result.output.split())
    assert "--ssl-certfile" in result.output
    assert fake_uvicorn[0]["host"] == host and fake_uvicorn[0]["ssl_certfile"] is None


def test_a_non_loopback_host_with_tls_does_not_warn(fake_uvicorn, tmp_path):
    cert, key = self_signed(tmp_path)
    result = serve("--host", "0.0.0.0", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key))
    assert result.exit_code == 0, result.output
    assert CLEAR_TEXT not in " ".join(result.output.split())
    assert "https://0.0.0.0:8080" in result.output
    assert fake_uvicorn[0]["ssl_certfile"] == str(cert)
    assert fake_uvicorn[0]["ssl_keyfile"] == str(key)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_does_not_warn(fake_uvicorn, host):
    result = serve("--host", host)
    assert result.exit_code == 0, result.output
    assert CLEAR_TEXT not in " ".join(result.output.split())


def test_a_certificate_without_its_key_is_refused(fake_uvicorn, tmp_path):
    cert, _ = self_signed(tmp_path)
    result = serve("--ssl-certfile", str(cert))
    assert result.exit_code != 0
    assert "--ssl-keyfile" in result.output
    assert not fake_uvicorn


def test_serve_help_says_how_the_docs_and_tls_work():
    from tunelab.cli import app

    text = " ".join(CliRunner().invoke(app, ["serve", "--help"]).output.split())
    assert "--ssl-certfile" in text and "--ssl-keyfile" in text
    assert "/openapi.json" in text


def test_serving_precisions_are_checked_before_anything_loads(fake_uvicorn):
    refused = serve("--precision", "int4")
    assert refused.exit_code != 0 and not fake_uvicorn
    assert "int8+bf16" in refused.output and "auto" in refused.output
    for precision in ("auto", "int8+bf16"):
        assert serve("--precision", precision).exit_code == 0


def test_the_default_precision_is_the_measured_fastest_and_fp32_is_one_flag_away(monkeypatch):
    """auto by default (held-out quality holds in every precision auto may pick); fp32, the
    precision predict and eval compute in, when asked."""
    import uvicorn

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: apps.append(app))
    assert serve().exit_code == 0 and serve("--precision", "fp32").exit_code == 0
    chosen = [app.state.inference.engine_options["precision"] for app in apps]
    assert chosen == ["auto", "fp32"]
