"""The reading gateway: a DICOMweb server that restores protected studies for entitled readers.

It runs in the site's trusted zone with the site identity (the private key workstations never
hold), sits between viewers and an upstream DICOMweb archive, decrypts instances on the fly
(byte-exact originals, verified by :mod:`cipher`), keeps the real patient attributes in an
index encrypted at rest, and writes every access to a hash-chained audit log.

Modules: :mod:`gateway.config` (``gateway.toml``), :mod:`gateway.store` (SQLite/PostgreSQL),
:mod:`gateway.audit` (the chain), :mod:`gateway.upstream` (DICOMweb client),
:mod:`gateway.restore` (decrypt + cache), :mod:`gateway.wado`, :mod:`gateway.qido`,
:mod:`gateway.app` (the ASGI app).
"""

from __future__ import annotations
