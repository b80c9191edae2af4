"""Shared pytest fixtures: real peers on loopback (see ``tests/peers.py``)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import pytest

from tests import peers


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[peers.OrthancPeer]:
    """One Orthanc (with DICOMweb) for the session; call ``orthanc.clear()`` if needed."""
    with peers.start_orthanc(tmp_path_factory.mktemp("orthanc")) as peer:
        yield peer


@pytest.fixture
def storescp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[peers.StoreSCPPeer]:
    """A fresh dcmtk storescp per test, receiving into its own directory."""
    with peers.start_storescp(tmp_path_factory.mktemp("storescp")) as peer:
        yield peer


@pytest.fixture
def age_binary() -> str:
    """Path of the reference ``age`` command (skip, or fail under CI=true, if missing)."""
    return peers.require_binary("age", "age")


@pytest.fixture
def dcmdump_binary() -> str:
    """Path of dcmtk's ``dcmdump`` (skip, or fail under CI=true, if missing)."""
    return peers.require_binary("dcmdump", "dcmtk")


@pytest.fixture(scope="session")
def site_keys() -> tuple[str, str]:
    """A site identity and its recipient, ``(AGE-SECRET-KEY-1…, age1…)``, for the session."""
    from cipher import keys

    return keys.generate_identity()


@pytest.fixture
def seeded_randbytes() -> Callable[[int], bytes]:
    """Deterministic randomness for image keys and nonces (reproducible failures)."""
    return random.Random(22).randbytes
