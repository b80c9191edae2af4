"""protocol.wire: the messages as JSON-ready dicts."""

from __future__ import annotations


def test_to_dict_gives_what_dataclasses_asdict_gives() -> None:
    import dataclasses

    from protocol import wire

    hb = wire.Heartbeat(
        "ag_1", "0.1.0", "host", "linux", 1.0, 2.0, counters={"seen": 3},
        destinations=[wire.DestinationStatus("pacs", "stow-rs", 2, True, 1.0, "HTTP 400")],
        quarantine=[], command_results=[], watcher={"overflows": 1})
    ack = wire.HeartbeatAck(ok=True, server_time=3.0, commands=[])
    for message in (hb, ack, wire.Ack(ok=True, server_time=1.0)):
        plain = wire.to_dict(message)
        assert plain == dataclasses.asdict(message)
    assert wire.to_dict(hb)["destinations"][0] == dataclasses.asdict(hb.destinations[0])
