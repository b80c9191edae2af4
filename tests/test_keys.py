"""age X25519 identities and recipients (cipher.keys)."""

from __future__ import annotations

import subprocess

import pytest

from cipher import keys
from cipher.errors import InvalidIdentityError, InvalidRecipientError
from tests import peers


def test_generate_identity_pair_matches() -> None:
    identity, recipient = keys.generate_identity()
    assert identity.startswith("AGE-SECRET-KEY-1")
    assert recipient.startswith("age1")
    assert keys.recipient_of(identity) == recipient
    assert keys.generate_identity()[0] != identity  # fresh every time


def test_parse_recipient_rejects_garbage_without_crashing() -> None:
    _, recipient = keys.generate_identity()
    assert str(keys.parse_recipient(f"  {recipient}\n")) == recipient
    bad_checksum = recipient[:-1] + ("q" if recipient[-1] != "q" else "p")
    for bad in ["", "age1", "age1xyz", "ssh-ed25519 AAAA", bad_checksum]:
        with pytest.raises(InvalidRecipientError):
            keys.parse_recipient(bad)


def test_parse_recipients_deduplicates_and_requires_one() -> None:
    _, r1 = keys.generate_identity()
    _, r2 = keys.generate_identity()
    assert [str(r) for r in keys.parse_recipients([r1, r2, r1])] == [r1, r2]
    with pytest.raises(InvalidRecipientError):
        keys.parse_recipients([])


def test_invalid_identity_message_never_echoes_the_secret() -> None:
    identity, _ = keys.generate_identity()
    broken = identity[:-3] + "QQQ"
    with pytest.raises(InvalidIdentityError) as info:
        keys.parse_identity(broken)
    assert broken not in str(info.value)
    assert identity[16:40] not in str(info.value)


def test_parse_identities_reads_age_keygen_format() -> None:
    i1, r1 = keys.generate_identity()
    i2, _ = keys.generate_identity()
    text = f"# created: 2026-01-01T00:00:00Z\n# public key: {r1}\n{i1}\n\n  {i2}  \n"
    assert keys.parse_identities(text) == [i1, i2]
    with pytest.raises(InvalidIdentityError, match="no identity"):
        keys.parse_identities("# only a comment\n")
    with pytest.raises(InvalidIdentityError, match="line 2"):
        keys.parse_identities(f"{i1}\nnot a key\n")


@pytest.mark.peer
def test_identity_from_age_keygen_is_understood(tmp_path) -> None:
    binary = peers.require_binary("age-keygen", "age")
    key_file = tmp_path / "site.key"
    subprocess.run([binary, "-o", str(key_file)], check=True, capture_output=True)
    text = key_file.read_text()
    (identity,) = keys.parse_identities(text)
    public = next(ln.split(": ", 1)[1] for ln in text.splitlines() if "public key" in ln)
    assert keys.recipient_of(identity) == public.strip()
