"""The leaf package shared by the agent, the central service, the reading gateway and the CLI.

Standard library only, and it imports none of them: the agent ↔ central wire format
(:mod:`protocol.wire`), the product version, durable file writes (:mod:`protocol.durable`)
and token/password hashing (:mod:`protocol.credentials`).
"""

from __future__ import annotations

__version__ = "0.1.0"
