"""``scanfort agent quarantine list | show ID | retry ID… | release ID…`` (``--json``).

Works while the agent runs: the commands read and write the journal through their own
connection (WAL), and the running agent carries out a retry or a release within a few
seconds (an agent that is stopped does it at its next start). A retry sends refused
copies again (after the operator fixed the destination) or protects the file again; a
release accepts the loss explicitly and applies the folder's ``after_ack``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from agent.config import AgentConfig
from agent.errors import JournalError
from agent.journal import Item, Journal
from agent.spool import Spool


def _entry(journal: Journal, item: Item, now: float) -> dict[str, Any]:
    deliveries = journal.delivery_states(item.id)
    refused = [d for d in deliveries if d.state == "quarantined"]
    return {
        "id": item.id, "state": item.state, "file_id": item.file_id, "path": item.path,
        "reason": item.reason, "since": item.updated_at,
        "age_s": round(max(0.0, now - item.updated_at), 1),
        "destinations": [d.dest for d in refused],
        "deliveries": [{"destination": d.dest, "state": d.state, "attempts": d.attempts,
                        "error": d.last_error} for d in deliveries],
    }


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _error(message: str) -> int:
    sys.stderr.write(f"scanfort: error: {message}\n")
    return 1


def _open(config: AgentConfig) -> Journal | None:
    if not config.journal_path.exists():
        return None
    return Journal(config.journal_path)


def run(config: AgentConfig, args: argparse.Namespace) -> int:
    journal = _open(config)
    action: str = args.quarantine_command
    if journal is None:
        if action == "list":
            print("[]" if args.json else "quarantine: empty")
            return 0
        return _error("no journal yet: nothing is quarantined")
    try:
        if action == "list":
            return _list(journal, args.json)
        if action == "show":
            return _show(journal, args.ids[0], args.json)
        return _act(journal, config, action, args.ids, args.json)
    finally:
        journal.close()


def _list(journal: Journal, as_json: bool) -> int:
    now = time.time()
    entries = [_entry(journal, it, now) for it in journal.quarantined()]
    if as_json:
        print(json.dumps(entries, indent=1))
        return 0
    if not entries:
        print("quarantine: empty")
        return 0
    print(f"{'ID':>6}  {'AGE':>6}  {'STATE':<11}  {'DESTINATION':<16}  REASON")
    for e in entries:
        dests = ",".join(e["destinations"]) or "-"
        print(f"{e['id']:>6}  {_age(e['age_s']):>6}  {e['state']:<11}  {dests:<16}  "
              f"{e['reason'] or ''}")
    return 0


def _show(journal: Journal, item_id: int, as_json: bool) -> int:
    try:
        item = journal.item(item_id)
    except JournalError:
        return _error(f"no item {item_id}")
    entry = _entry(journal, item, time.time())
    if as_json:
        print(json.dumps(entry, indent=1))
        return 0
    for key in ("id", "state", "file_id", "path", "reason"):
        print(f"{key + ':':<13}{entry[key]}")
    print(f"{'age:':<13}{_age(entry['age_s'])}")
    for d in entry["deliveries"]:
        err = f": {d['error']}" if d["error"] else ""
        print(f"{'delivery:':<13}{d['destination']} {d['state']} "
              f"({d['attempts']} attempt(s)){err}")
    return 0


def _act(journal: Journal, config: AgentConfig, action: str, ids: list[int],
         as_json: bool) -> int:
    spool = Spool(config.spool_dir)
    results: list[dict[str, Any]] = []
    code = 0
    for item_id in ids:
        try:
            if action == "retry":
                what = journal.request_retry(item_id, spool.exists)
                text = ("its refused copies are sent again" if what == "resent"
                        else "it is protected again from the plaintext")
            else:
                journal.request_release(item_id)
                what, text = "released", "loss accepted; after_ack is applied"
        except JournalError as exc:
            code = 1
            results.append({"id": item_id, "ok": False, "error": str(exc)})
            if not as_json:
                sys.stderr.write(f"scanfort: error: {exc}\n")
            continue
        results.append({"id": item_id, "ok": True, "action": what})
        if not as_json:
            print(f"{item_id}: {text}")
    if as_json:
        print(json.dumps(results, indent=1))
    elif code == 0:
        print("the running agent carries this out within seconds (a stopped one at its "
              "next start)")
    return code


def register(sub: Any, add: Any) -> None:
    """Add ``quarantine`` under ``scanfort agent`` (``add`` makes a subcommand parser)."""
    p = add("quarantine", "list quarantined items; retry or release them", None)
    qsub = p.add_subparsers(dest="quarantine_command", metavar="ACTION", required=True,
                            parser_class=type(p))
    for name, help_text, nargs in (
            ("list", "items waiting for an operator: reason, age, destination", None),
            ("show", "everything about one item", 1),
            ("retry", "send again (the destination was fixed) or protect again", "+"),
            ("release", "accept the loss: apply after_ack as if delivered", "+")):
        q = qsub.add_parser(name, help=help_text)
        q.add_argument("--json", action="store_true", help="machine-readable output")
        q.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                       help="config file")
        if nargs is not None:
            q.add_argument("ids", metavar="ID", type=int, nargs=nargs,
                           help="quarantine entry ids (from quarantine list)")
    return None
