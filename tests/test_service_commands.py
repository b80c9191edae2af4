"""Quarantine across the fleet, the command channel, exam lookup, ``scanfort central user``.

The agent does not send these fields yet; the tests post them as an agent would.
"""

from __future__ import annotations

import json

from cipher.pseudonym import PseudonymSecret
from scanfort.cli import main
from service import commands, lookup, throttle, users
from service.settings import load_settings
from service.store import Store
from tests import test_service_api as _api
from tests.test_service_api import PASSWORD, bearer, heartbeat
from tests.test_service_fleet import beat, enroll_with, ev, login_as, post_events

ITEM = "0123456789abcdef"
QUARANTINED = {
    "item_id": ITEM,
    "destination": "pacs",
    "since": 1_800_000_000.0,
    "reason": "stow-rs: HTTP 400 (Orthanc: bad file format)",
    "attempts": 5,
}

# fixtures shared with test_service_api (SQLite and a real PostgreSQL)
client = _api.client
clock = _api.clock
db_url = _api.db_url
postgres_server = _api.postgres_server
settings = _api.settings
store = _api.store


def test_quarantine_retry_reaches_the_agent_and_its_result_comes_back(client, store, clock):
    a = enroll_with(client, store, "CT 2", "Room 2", "vm")
    other = enroll_with(client, store, "MR", "", "vm")
    assert beat(client, a, quarantine=[QUARANTINED])["commands"] == []
    csrf = login_as(client, "admin", PASSWORD)
    page = client.get("/quarantine").text
    row = page.split(f'data-item="{ITEM}"')[1].split("</tr>")[0]
    assert "CT 2" in row and "pacs" in row and "Orthanc: bad file format" in row and "retry" in row

    form = {"csrf": csrf, "agent_id": a["agent_id"], "item_id": ITEM, "destination": "pacs"}
    r = client.post("/quarantine/command", data={**form, "kind": "retry"}, follow_redirects=False)
    assert r.status_code == 303
    # an item the agent did not report cannot be targeted
    bogus = {**form, "item_id": "f" * 16, "kind": "release"}
    assert client.post("/quarantine/command", data=bogus).status_code == 404
    # repeating an open command does not queue a second one
    client.post("/quarantine/command", data={**form, "kind": "retry"}, follow_redirects=False)

    assert beat(client, other)["commands"] == []  # only the addressed agent gets it
    first = beat(client, a, quarantine=[QUARANTINED])["commands"]
    assert [(c["kind"], c["item_id"], c["destination"]) for c in first] == [("retry", ITEM, "pacs")]
    command_id = first[0]["command_id"]
    again = beat(client, a, quarantine=[QUARANTINED])["commands"]
    assert [c["command_id"] for c in again] == [command_id]  # resent until acknowledged
    # another agent cannot acknowledge or complete it
    beat(client, other, command_acks=[command_id],
         command_results=[{"command_id": command_id, "ok": False, "message": "nope"}])
    assert commands.list_commands(store, a["agent_id"])[0].state == commands.PENDING

    assert beat(client, a, command_acks=[command_id])["commands"] == []
    assert commands.list_commands(store, a["agent_id"])[0].state == commands.ACKNOWLEDGED
    result = {"command_id": command_id, "ok": True, "message": "sent, HTTP 200"}
    beat(client, a, quarantine=[], command_results=[result])
    done = commands.list_commands(store, a["agent_id"])
    assert len(done) == 1 and done[0].state == commands.SUCCEEDED
    assert done[0].result == "sent, HTTP 200" and done[0].created_by == "admin"
    page = client.get("/quarantine").text
    assert "Nothing in quarantine." in page and 'data-state="succeeded"' in page
    audit = [r for r in users.audit_log(store) if r.action == "quarantine.retry"]
    assert len(audit) == 2 and command_id in audit[0].detail


def test_commands_never_acknowledged_expire_and_are_audited(client, store, settings, clock):
    a = enroll_with(client, store, "CT 2", "Room 2", "vm")
    beat(client, a, quarantine=[QUARANTINED])
    csrf = login_as(client, "admin", PASSWORD)
    form = {"csrf": csrf, "agent_id": a["agent_id"], "item_id": ITEM, "destination": "pacs"}
    for kind in ("retry", "release"):
        r = client.post("/quarantine/command", data={**form, "kind": kind}, follow_redirects=False)
        assert r.status_code == 303
    retry, release = sorted(commands.list_commands(store, a["agent_id"]),
                            key=lambda c: c.kind != "retry")  # fmt: skip
    # the agent acknowledges the retry only; the release stays pending
    clock.now += 60
    beat(client, a, quarantine=[QUARANTINED], command_acks=[retry.command_id])
    assert settings.command_ttl_s == 24 * 3600  # the default
    clock.now += settings.command_ttl_s - 120  # not yet overdue
    assert commands.expire_overdue(store, settings.command_ttl_s) == []
    clock.now += 121
    csrf = login_as(client, "admin", PASSWORD)  # the first session has timed out meanwhile
    form["csrf"] = csrf
    page = client.get("/quarantine").text  # the page sweeps overdue commands
    assert f'data-command-id="{release.command_id}" data-state="expired"' in page
    assert f'data-command-id="{retry.command_id}" data-state="acknowledged"' in page
    assert "not acknowledged by the agent within 24 h" in page
    # never handed out again, and a second sweep (another process) changes nothing
    assert beat(client, a, quarantine=[QUARANTINED])["commands"] == []
    assert commands.expire_overdue(store, settings.command_ttl_s) == []
    expired = [r for r in users.audit_log(store) if r.action == "command.expired"]
    assert len(expired) == 1 and expired[0].username == "system"
    assert release.command_id in expired[0].detail and expired[0].target == a["agent_id"]
    audit_page = client.get("/audit").text
    assert 'data-action="command.expired"' in audit_page and release.command_id in audit_page
    # a late acknowledgement does not revive it; the operator can issue it again
    beat(client, a, quarantine=[QUARANTINED], command_acks=[release.command_id])
    states = {c.command_id: c.state for c in commands.list_commands(store, a["agent_id"])}
    assert states[release.command_id] == commands.EXPIRED
    r = client.post("/quarantine/command", data={**form, "kind": "release"}, follow_redirects=False)
    assert r.status_code == 303
    fresh = beat(client, a, quarantine=[QUARANTINED])["commands"]
    assert [c["kind"] for c in fresh] == ["release"] and fresh[0]["command_id"] != release.command_id


def test_expiry_in_a_heartbeat_applies_a_configured_ttl(client, store, settings, clock):
    a = enroll_with(client, store, "CT 3", "", "vm")
    beat(client, a, quarantine=[QUARANTINED])
    command_id = commands.enqueue(store, a["agent_id"], "retry", ITEM, "pacs", by="admin")
    clock.now += 11
    assert commands.pending_for(store, a["agent_id"], True, ttl_s=10.0) == []
    assert commands.list_commands(store, a["agent_id"])[0].state == commands.EXPIRED
    assert any(command_id in r.detail for r in users.audit_log(store))
    (settings.data_dir).mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "central.toml").write_text("command_ttl_s = 0\n")
    import pytest

    from service.errors import ConfigError

    with pytest.raises(ConfigError, match="command_ttl_s"):
        load_settings(settings.data_dir)


def test_heartbeat_schema_rejects_malformed_command_fields(client, store):
    a = enroll_with(client, store, "", "", "vm")
    for bad in (
        {"quarantine": [{"item_id": ITEM}]},
        {"command_results": [{"command_id": "x", "ok": "yes"}]},
        {"command_acks": ["x" * 65]},
        {"name": "n" * 129},
    ):
        r = client.post(
            "/api/v1/heartbeat",
            json=heartbeat(a["agent_id"], **bad),
            headers=bearer(a["agent_token"]),
        )
        assert r.status_code == 422, (bad, r.text)


# -- exam lookup ------------------------------------------------------------------------


def test_study_key_matches_the_cipher_package():
    secret = PseudonymSecret.generate()
    key = lookup.load_key_text(secret.encode())
    for value in ("1.2.840.113619.2.55.3.604688119", "ACC12345 ", "ACC12345\x00", "Ünïcode"):
        assert lookup.study_key(key, value) == secret.study_key(value)
    assert lookup.study_key(key, "A1") != lookup.study_key(b"\x01" * 32, "A1")


def test_exam_lookup_finds_who_protected_it_and_which_destinations_acknowledged(
    client, store, settings
):
    secret = PseudonymSecret.generate()
    settings.pseudonym_secret_path.parent.mkdir(parents=True, exist_ok=True)
    settings.pseudonym_secret_path.write_text(secret.encode(), encoding="ascii")
    accession, study_uid = "ACC-2024-0042", "1.2.826.0.1.3680043.8.498.1"
    keys = [secret.study_key(accession), secret.study_key(study_uid)]
    a = enroll_with(client, store, "CT 2", "", "vm")
    post_events(
        client,
        a,
        [
            ev("protected", 1_800_000_000.0, file_id=ITEM, study_keys=keys),
            ev("forwarded", 1_800_000_010.0, file_id=ITEM, destination="pacs", study_keys=keys),
            ev("protected", 1_800_000_020.0, study_keys=[secret.study_key("OTHER")]),
        ],
    )
    csrf = login_as(client, "admin", PASSWORD)
    for typed in (accession, f"{study_uid} "):  # DICOM padding is ignored
        r = client.post("/lookup", data={"csrf": csrf, "q": typed})
        assert r.status_code == 200
        result = r.text.split('id="lookup-result"')[1]
        assert "Protected by <b>CT 2</b>" in result and "Acknowledged by: <b>pacs</b>" in result
        assert result.count('<tr><td data-label="Time">') == 2  # two sightings
        assert typed.strip() not in r.text.split("<main>")[1].split("</form>")[1]  # not echoed
    r = client.post("/lookup", data={"csrf": csrf, "q": "ACC-UNKNOWN"})
    assert "Not seen" in r.text
    assert client.post("/lookup", data={"q": accession}).status_code == 403  # CSRF
    # the central keeps only keyed hashes
    dumped = "\n".join(str(row) for row in store.engine.connect().exec_driver_sql(
        "SELECT * FROM sf_study_events").all())
    assert accession not in dumped and study_uid not in dumped and keys[0] in dumped


def _clock(t: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def test_exam_lookup_shows_each_protecting_agent_and_per_destination_acknowledgements(
    client, store, settings
):
    """Two agents protected files of one exam; their `forwarded` events (one per acknowledged
    delivery, with destination and the item's study_keys) say which destination has what."""
    secret = PseudonymSecret.generate()
    settings.pseudonym_secret_path.parent.mkdir(parents=True, exist_ok=True)
    settings.pseudonym_secret_path.write_text(secret.encode(), encoding="ascii")
    accession, study_uid = "ACC-7", "1.2.826.0.1.3680043.8.498.77"
    keys = [secret.study_key(accession), secret.study_key(study_uid)]
    ct = enroll_with(client, store, "CT 2", "", "vm")
    mr = enroll_with(client, store, "MR 1", "", "vm")
    f1, f2, f3 = "a" * 16, "b" * 16, "c" * 16
    t0 = 1_800_000_000.0
    post_events(client, ct, [
        ev("protected", t0, file_id=f1, study_keys=keys),
        ev("protected", t0 + 5, file_id=f2, study_keys=keys),
        ev("forwarded", t0 + 20, file_id=f1, destination="pacs", study_keys=keys),
        ev("forwarded", t0 + 30, file_id=f2, destination="pacs", study_keys=keys),
        ev("forwarded", t0 + 40, file_id=f1, destination="central", study_keys=keys),
    ])  # fmt: skip
    post_events(client, mr, [ev("protected", t0 + 100, file_id=f3, study_keys=keys[1:])])
    # another exam's delivery by MR does not show up under this one
    post_events(client, mr, [ev("forwarded", t0 + 50, file_id="d" * 16, destination="pacs",
                                study_keys=[secret.study_key("ANOTHER")])])  # fmt: skip
    csrf = login_as(client, "admin", PASSWORD)
    r = client.post("/lookup", data={"csrf": csrf, "q": accession})
    assert r.status_code == 200
    result = r.text.split('id="lookup-result"')[1]
    blocks = result.split('<div class="exam" data-agent-id="')[1:]
    assert [b.split('"')[0] for b in blocks] == [ct["agent_id"]]  # MR's files had only the UID
    ct_block = blocks[0]
    assert f"Protected by <b>CT 2</b> at {_clock(t0)} (2 files, the last at {_clock(t0 + 5)})" in ct_block
    pacs = ct_block.split('data-destination="pacs"')[1].split("</tr>")[0]
    central = ct_block.split('data-destination="central"')[1].split("</tr>")[0]
    assert 'data-complete="yes"' in pacs and ">2 of 2</td>" in pacs
    assert _clock(t0 + 20) in pacs and _clock(t0 + 30) in pacs and "complete" in pacs
    assert 'data-complete="no"' in central and ">1 of 2</td>" in central and "partial" in central

    r = client.post("/lookup", data={"csrf": csrf, "q": study_uid})
    blocks = r.text.split('id="lookup-result"')[1].split('<div class="exam" data-agent-id="')[1:]
    assert [b.split('"')[0] for b in blocks] == [ct["agent_id"], mr["agent_id"]]
    assert "Protected by <b>MR 1</b>" in blocks[1]
    assert "No destination has acknowledged it yet." in blocks[1]


def test_exam_lookup_without_a_secret_says_so(client, store):
    csrf = login_as(client, "admin", PASSWORD)
    r = client.post("/lookup", data={"csrf": csrf, "q": "ACC1"})
    assert r.status_code == 503 and "pseudonymisation secret" in r.text


# -- scanfort central user --------------------------------------------------------------


def test_user_cli_add_list_disable_passwd(tmp_path, capsys, monkeypatch):
    data = tmp_path / "central"

    def central(*args: str) -> tuple[int, str, str]:
        code = main(["central", *args, "--data-dir", str(data)])
        out, err = capsys.readouterr()
        return code, out, err

    monkeypatch.setenv("SCANFORT_ADMIN_PASSWORD", "first-admin-password")
    assert central("init")[0] == 0
    monkeypatch.delenv("SCANFORT_ADMIN_PASSWORD")
    pw = tmp_path / "pw"
    pw.write_text("operator-password\n")
    code, out, _ = central("user", "add", "otto", "--role", "operator", "--password-file", str(pw))
    assert code == 0 and "added otto (operator)" in out
    code, out, _ = central("user", "add", "vera")
    assert code == 0 and "password:" in out  # generated, viewer by default
    code, _, err = central("user", "add", "otto", "--password-file", str(pw))
    assert code == 1 and "user otto exists" in err
    code, out, _ = central("user", "list", "--json")
    assert json.loads(out) == [
        {"username": "admin", "role": "admin", "disabled": False},
        {"username": "otto", "role": "operator", "disabled": False},
        {"username": "vera", "role": "viewer", "disabled": False},
    ]
    assert central("user", "disable", "otto")[0] == 0
    assert "otto   operator  disabled" in central("user", "list")[1]
    code, _, err = central("user", "disable", "admin")
    assert code == 1 and "last enabled admin" in err
    pw.write_text("short")
    code, _, err = central("user", "passwd", "otto", "--password-file", str(pw))
    assert code == 1 and "at least 10" in err
    pw.write_text("a-longer-password")
    assert central("user", "passwd", "otto", "--password-file", str(pw))[0] == 0
    assert "otto   operator  active" in central("user", "list")[1]
    code, _, err = central("user", "passwd", "nobody", "--password-file", str(pw))
    assert code == 1 and "no user nobody" in err
    assert "otto was not locked" in central("user", "unlock", "otto")[1]
    s = Store(load_settings(data).database_url)
    try:
        throttle.record_attempt(s, throttle.user_key("otto"), 900.0)
        throttle.lock(s, throttle.user_key("otto"))
        assert throttle.locked_users(s) == {"otto"}
        assert "unlocked otto" in central("user", "unlock", "otto")[1]
        assert throttle.locked_users(s) == set()
        actions = [(r.username, r.action, r.target) for r in users.audit_log(s)]
    finally:
        s.close()
    assert ("cli", "user.disable", "otto") in actions and ("cli", "user.passwd", "otto") in actions
    assert ("cli", "user.unlock", "otto") in actions
