"""What protecting one settled file can come to, and what the agent does about each.

The policy is data: the protect threads look their outcome up in :data:`POLICY` and do
what it says, nothing else is decided in the thread loop.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.Enum):
    PROTECTED = "protected"      # recorded with its deliveries: wake the senders
    KNOWN = "known"              # this version is already in the journal
    DUPLICATE = "duplicate"      # same content as a version already protected or sent
    VANISHED = "vanished"        # gone before it could be protected
    CHANGED = "changed"          # changed under the worker: let it settle again
    INCOMPLETE = "incomplete"    # a truncated DICOM file inside its grace period
    RETRY = "retry"              # a failure that may not happen again (bounded)
    WORKER_DOWN = "worker_down"  # no protect worker could start: files wait in place
    NO_SPACE = "no_space"        # the spool volume is (nearly) full: files wait in place
    QUARANTINED = "quarantined"  # waits for an operator; the plaintext stays in place


#: Seconds to wait before a file is offered again, when it is: "settle" means the
#: folder's settle time (at least a second).
SETTLE = -1.0


@dataclass(frozen=True)
class Policy:
    reoffer_after_s: float | None = None  # offer the file to the settler again after this
    supersede: bool = False  # the journal's item for this path is an outdated version
    counter: str | None = None  # journal counter bumped
    wake_senders: bool = False
    finished: bool = True  # nothing more to do for this file version (until it changes)


POLICY: dict[Outcome, Policy] = {
    Outcome.PROTECTED: Policy(wake_senders=True),
    Outcome.KNOWN: Policy(),
    Outcome.DUPLICATE: Policy(),
    Outcome.VANISHED: Policy(),
    Outcome.CHANGED: Policy(reoffer_after_s=SETTLE, supersede=True, finished=False),
    Outcome.INCOMPLETE: Policy(reoffer_after_s=SETTLE, finished=False),
    Outcome.RETRY: Policy(reoffer_after_s=SETTLE, counter="retries", finished=False),
    Outcome.WORKER_DOWN: Policy(reoffer_after_s=30.0, finished=False),
    Outcome.NO_SPACE: Policy(reoffer_after_s=5.0, finished=False),
    Outcome.QUARANTINED: Policy(),
}


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    item_id: int | None = None
    resolved: bool = False  # protected with nothing to send (every delivery refused/skipped)

    @property
    def policy(self) -> Policy:
        return POLICY[self.outcome]


def reoffer_delay(policy: Policy, settle_s: float) -> float | None:
    if policy.reoffer_after_s is None:
        return None
    if policy.reoffer_after_s == SETTLE:
        return max(settle_s, 1.0)
    return policy.reoffer_after_s
