"""The real agent code against a real central on loopback: enroll, then upload protected objects."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from scanfort.cli import main
from service.bootstrap import initialize
from service.server import BackgroundServer

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"


def test_agent_enrolls_and_uploads_through_its_own_forwarder(tmp_path: Path, capsys):
    forward = pytest.importorskip("agent.forward.central")
    base = pytest.importorskip("agent.forward.base")
    agent_config = pytest.importorskip("agent.config")
    errors = pytest.importorskip("agent.errors")
    init = initialize(tmp_path / "central", admin_password="pw", recipients=(RECIPIENT,))
    config_path = tmp_path / "agent.toml"
    with BackgroundServer(init.settings) as server:
        code = main(
            [
                "agent",
                "enroll",
                "--config",
                str(config_path),
                "--central",
                server.url,
                "--token",
                init.enrollment_token,
            ]
        )
        assert code == 0, capsys.readouterr().err
        written = tomllib.loads(config_path.read_text())
        central = written["central"]
        assert written["recipients"] == [RECIPIENT]
        assert central["url"] == server.url and central["agent_id"].startswith("ag_")
        assert central["token"].startswith("sfa_")
        # The site's pseudonymisation secret travelled from central init to the agent.
        assert written["pseudonym_secret_file"] == "pseudonym.secret"
        assert (tmp_path / "pseudonym.secret").read_text().strip() == \
            init.settings.pseudonym_secret_path.read_text().strip()
        # the enrollment token was single-use
        assert (
            main(
                [
                    "agent",
                    "enroll",
                    "--config",
                    str(tmp_path / "again.toml"),
                    "--central",
                    server.url,
                    "--token",
                    init.enrollment_token,
                ]
            )
            != 0
        )

        sender = forward.CentralForwarder(
            agent_config.DestinationConfig(name="central", kind="central"),
            agent_config.CentralConfig(
                url=server.url, agent_id=central["agent_id"], token=central["token"]
            ),
        )
        artifact = tmp_path / "spooled.age"
        artifact.write_bytes(b"age-encryption.org/v1\n" + bytes(range(256)) * 40)
        sha = hashlib.sha256(artifact.read_bytes()).hexdigest()
        obj = base.Outgoing(
            item_id=1,
            file_id="0" * 16,
            path=artifact,
            sha256=sha,
            size=artifact.stat().st_size,
            mode="file",
            relpath="x",
        )
        sender.send(obj)
        sender.send(obj)  # idempotent: acknowledged again
        stored = init.settings.objects_dir / sha[:2] / sha[2:4] / sha
        assert stored.read_bytes() == artifact.read_bytes()
        forged = base.Outgoing(
            item_id=2,
            file_id="1" * 16,
            path=artifact,
            sha256="a" * 64,
            size=artifact.stat().st_size,
            mode="file",
            relpath="y",
        )
        with pytest.raises(errors.DeliveryError, match="HTTP 422") as rejected:
            sender.send(forged)
        assert rejected.value.permanent  # a hash mismatch is not worth retrying
        sender.close()
