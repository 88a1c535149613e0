"""The cluster behind a secured Mosquitto: TLS with certificates this test makes, a password per user
or a client certificate whose CN is the username, and the ACL from ``edgeflow acl``. The daemons,
``deploy`` and ``infer`` all work through it; a node cannot write another node's status."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.cli.main import main
from controller.control.acl import mosquitto_acl
from controller.lab.launch import REPO
from edgeflowd.errors import MqttError
from edgeflowd.net.mqtt import Connection
from edgeflowd.net.settings import BrokerSettings
from edgeflowd.wire.messages import PlanInfo, Status, decode_control, encode_control
from edgeflowd.wire.topics import Topics
from tests.cluster import DaemonProcess, Watcher, free_port, mosquitto_broker

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test certificates"),
]

CLUSTER = "secure"
NODES = ("sec-a", "sec-b")  # sec-a logs in with a password, sec-b with a client certificate


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _certificate(d: Path, name: str, *, server: bool = False) -> None:
    """``name.key`` and ``name.crt`` signed by the test CA (``ca.crt``), CN = name."""
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={name}",
        cwd=d,
    )
    ext = d / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n" if server else "extendedKeyUsage=clientAuth\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        f"{name}.crt",
        "-days",
        "2",
        "-extfile",
        ext.name,
        cwd=d,
    )


@dataclass
class Secured:
    url: str  # TLS with passwords
    cert_url: str  # TLS with client certificates
    files: Path

    def as_user(self, user: str) -> BrokerSettings:
        return BrokerSettings(
            self.url,
            ca_file=str(self.files / "ca.crt"),
            username=user,
            password_file=str(self.files / f"{user}.password"),
        )

    def flags(self, user: str) -> list[str]:
        return [
            "--broker",
            self.url,
            "--ca-file",
            str(self.files / "ca.crt"),
            "--username",
            user,
            "--password-file",
            str(self.files / f"{user}.password"),
        ]


@pytest.fixture(scope="module")
def secured() -> Iterator[Secured]:
    # Mosquitto started as root reads its files as user mosquitto: a world-readable directory.
    files = Path(tempfile.mkdtemp(prefix="edgeflow-tls-", dir="/tmp"))
    try:
        files.chmod(0o755)
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=edgeflow-test-ca",
            cwd=files,
        )
        _certificate(files, "broker", server=True)
        _certificate(files, "sec-b")
        passwd = files / "passwd"
        for user in ("sec-a", "controller", "client"):
            password = os.urandom(12).hex()
            (files / f"{user}.password").write_text(password + "\n")
            create = [] if passwd.exists() else ["-c"]
            subprocess.run(["mosquitto_passwd", *create, "-b", str(passwd), user, password], check=True, timeout=30)
        (files / "acl").write_text(mosquitto_acl(CLUSTER, NODES))
        for path in files.iterdir():
            path.chmod(0o644)
        tls = f"cafile {files}/ca.crt\ncertfile {files}/broker.crt\nkeyfile {files}/broker.key\n"
        cert_port = free_port()
        listener = f"{tls}allow_anonymous false\npassword_file {passwd}\nacl_file {files}/acl\n"
        by_certificate = (
            f"listener {cert_port} 127.0.0.1\n{tls}require_certificate true\nuse_identity_as_username true\n"
        )
        with mosquitto_broker(files, listener=listener, extra=by_certificate, tls=True) as broker:
            yield Secured(broker.url, f"mqtts://127.0.0.1:{cert_port}", files)
    finally:
        shutil.rmtree(files, ignore_errors=True)


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    print(out, err)
    return code, out + err


def _online(watcher: Watcher, node: str) -> Status | None:
    payload = watcher.last.get(f"{watcher.root}/node/{node}/status")
    status = decode_control(payload, "status", Status) if payload else None
    return status if status is not None and status.state == "online" else None


def test_daemons_deploy_and_infer_through_tls_with_acls(
    secured: Secured, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_file = tmp_path / "secure.yaml"
    cluster_file.write_text(
        f"schema: edgeflow.cluster/1\nname: {CLUSTER}\ndevices:\n"
        + "".join(f"  - {{id: {n}, profile: local-core}}\n" for n in NODES)
    )
    ca = str(secured.files / "ca.crt")
    a = DaemonProcess(
        "sec-a",
        secured.url,
        CLUSTER,
        tmp_path,
        "--ca-file",
        ca,
        "--username",
        "sec-a",
        "--password-file",
        str(secured.files / "sec-a.password"),
    )
    b = DaemonProcess(
        "sec-b",
        secured.cert_url,
        CLUSTER,
        tmp_path,
        "--ca-file",
        ca,
        "--cert-file",
        str(secured.files / "sec-b.crt"),
        "--key-file",
        str(secured.files / "sec-b.key"),
    )
    watcher = Watcher(secured.as_user("controller"), CLUSTER)
    try:
        watcher.wait_for("both nodes online over TLS", lambda last: all(_online(watcher, n) for n in NODES))
        code, out = _cli(
            capsys,
            "deploy",
            "--model",
            "small_dag",
            "--cluster",
            str(cluster_file),
            "--method",
            "equal",
            *secured.flags("controller"),
        )
        assert code == 0, out + a.log() + b.log()
        code, out = _cli(
            capsys,
            "infer",
            "--model",
            "small_dag",
            "--cluster",
            CLUSTER,
            "--repeat",
            "4",
            "--check",
            *secured.flags("client"),
        )
        assert code == 0 and "4/4 requests succeeded" in out and ": ok" in out, out

        # sec-a forges sec-b's retained status, then writes its own info: the broker drops the
        # first (ACL) and delivers the second, so the second's arrival proves the first had its chance.
        topics = Topics(CLUSTER)
        b_before = _online(watcher, "sec-b")
        forger = Connection(secured.as_user("sec-a"), "forger", lambda t, p: None)
        forger.start()
        try:
            forged = encode_control(Status(state="offline", instance="forged"))
            forger.publish(topics.node("sec-b", "status"), forged, qos=1, retain=True).wait_for_publish(10)
            forger.publish_wait(topics.node("sec-a", "info"), b"positive control", retain=True)
        finally:
            forger.stop()
        watcher.wait_for(
            "sec-a's own write", lambda last: last.get(topics.node("sec-a", "info")) == b"positive control"
        )
        assert _online(watcher, "sec-b") == b_before, "a node overwrote another node's status"

        # A requester forges a result for a request and writes a latency report: the broker drops
        # the first (ACL: requesters read results, nodes write them) and delivers the second.
        plan = decode_control(watcher.last[topics.controller("plan", "small_dag")], "plan", PlanInfo).plan
        assert watcher.conn.subscribe_wait([topics.all_data], qos=1)
        forger = Connection(secured.as_user("client"), "forger", lambda t, p: None)
        forger.start()
        try:
            forger.publish(topics.result(plan, "victim-1"), b"zeros", qos=1).wait_for_publish(10)
            forger.publish_wait(topics.latency(plan), b"positive control")
        finally:
            forger.stop()
        watcher.wait_for("the requester's latency report", lambda last: topics.latency(plan) in last)
        assert topics.result(plan, "victim-1") not in watcher.last, "a requester wrote a result"
    finally:
        watcher.close()
        a.terminate()
        b.terminate()
    assert "refused" not in a.log() + b.log()


def test_bad_credentials_fail_clearly(secured: Secured, capsys: pytest.CaptureFixture[str]) -> None:
    wrong = secured.files / "wrong.password"
    try:
        wrong.write_text("not-the-password\n")
        code, out = _cli(
            capsys,
            "status",
            "--cluster",
            str(REPO / "profiles/clusters/local-3.yaml"),
            "--broker",
            secured.url,
            "--ca-file",
            str(secured.files / "ca.crt"),
            "--username",
            "controller",
            "--password-file",
            str(wrong),
        )
        assert code != 0 and "Not authorized" in out, out
    finally:
        wrong.unlink()
    with pytest.raises(MqttError, match="CERTIFICATE_VERIFY_FAILED"):  # the system CAs did not sign it
        Connection(BrokerSettings(secured.url), "no-ca", lambda t, p: None).start()
    with pytest.raises(MqttError, match="Not authorized"):  # no anonymous access
        Connection(
            BrokerSettings(secured.url, ca_file=str(secured.files / "ca.crt")), "anon", lambda t, p: None
        ).start()
    with pytest.raises(MqttError, match=r"password_file /nonexistent: cannot read"):
        Connection(BrokerSettings(secured.url, username="x", password_file="/nonexistent"), "x", lambda t, p: None)
