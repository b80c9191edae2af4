"""``scanfort keygen | encrypt | decrypt | inspect`` (in process, real files in tmp_path)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from scanfort import cli_protect
from scanfort.cli import _Parser

AUTH_MESSAGE = "the file is truncated, corrupted or was tampered with"


def run(*argv: str) -> int:
    parser = _Parser(prog="scanfort")
    cli_protect.register(parser.add_subparsers(dest="command", parser_class=_Parser))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


def _testdata(name: str) -> Path:
    path = get_testdata_file(name)
    assert isinstance(path, str)
    return Path(path)


@pytest.fixture
def site(tmp_path, capsys) -> tuple[Path, str]:
    key = tmp_path / "keys" / "site.key"
    assert run("keygen", "-o", str(key)) == 0
    recipient = capsys.readouterr().out.strip()
    return key, recipient


@pytest.fixture
def tree(tmp_path) -> Path:
    """Inputs: two DICOM files (one nested), a text file, an empty file."""
    root = tmp_path / "in"
    (root / "series" / "deep").mkdir(parents=True)
    (root / "CT_small.dcm").write_bytes(_testdata("CT_small.dcm").read_bytes())
    (root / "series" / "deep" / "MR_small_RLE.dcm").write_bytes(
        _testdata("MR_small_RLE.dcm").read_bytes()
    )
    (root / "series" / "report.txt").write_text("findings: none\n")
    (root / "empty.bin").write_bytes(b"")
    return root


def test_keygen_writes_0600_and_prints_only_the_recipient(site, capsys) -> None:
    key, recipient = site
    assert recipient.startswith("age1") and "\n" not in recipient
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "AGE-SECRET-KEY-1" in key.read_text()
    assert run("keygen", "-y", str(key)) == 0
    assert capsys.readouterr().out.strip() == recipient


def test_keygen_never_overwrites(site, capsys) -> None:
    key, _ = site
    before = key.read_text()
    assert run("keygen", "-o", str(key)) == 2
    err = capsys.readouterr().err
    assert "scanfort: error:" in err and "already exists" in err
    assert "scanfort: hint:" in err
    assert key.read_text() == before


def test_encrypt_decrypt_directory_tree(site, tree, tmp_path, capsys) -> None:
    key, recipient = site
    out, back = tmp_path / "out", tmp_path / "back"
    assert run("encrypt", "-r", recipient, "-o", str(out), str(tree)) == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == [
        "CT_small.dcm",
        "empty.bin.age",
        "series/deep/MR_small_RLE.dcm",
        "series/report.txt.age",
    ]
    assert "encrypted 4 files (2 dicom mode, 2 file mode)" in capsys.readouterr().err
    protected = pydicom.dcmread(out / "CT_small.dcm")
    assert str(protected.PatientName).startswith("SF0^")  # no secret: one patient per study
    assert protected.PatientIdentityRemoved == "YES"
    assert not list(out.rglob("*.tmp"))

    assert run("decrypt", "-i", str(key), "-o", str(back), str(out)) == 0
    for src in tree.rglob("*"):
        if src.is_file():
            restored = back / src.relative_to(tree)
            assert restored.read_bytes() == src.read_bytes()  # both modes: byte for byte


def test_inspect_json_and_text(site, tree, tmp_path, capsys) -> None:
    _, recipient = site
    out = tmp_path / "out"
    assert run("encrypt", "-r", recipient, "-r", recipient, "-o", str(out), str(tree)) == 0
    capsys.readouterr()
    assert run("inspect", "--json", str(out / "CT_small.dcm")) == 0
    info = json.loads(capsys.readouterr().out)
    original = pydicom.dcmread(tree / "CT_small.dcm")
    assert info["mode"] == "dicom" and info["format_version"] == 2 and info["recipients"] == 1
    assert info["policy"] == "profile[retain-long-full-dates,retain-uids]"
    assert info["uids"]["SOPInstanceUID"] == original.SOPInstanceUID
    assert str(original.PatientName) not in json.dumps(info)
    assert run("inspect", str(out / "series" / "report.txt.age")) == 0
    text = capsys.readouterr().out
    assert "mode: file" in text and "content_bytes: 15" in text


def test_wrong_identity_and_tamper_fail_with_summary(site, tree, tmp_path, capsys) -> None:
    _, recipient = site
    out = tmp_path / "out"
    assert run("encrypt", "-r", recipient, "-o", str(out), str(tree)) == 0
    other = tmp_path / "other.key"
    assert run("keygen", "-o", str(other)) == 0
    capsys.readouterr()
    assert run("decrypt", "-i", str(other), "-o", str(tmp_path / "x"), str(out)) == 1
    err = capsys.readouterr().err
    assert err.count("no identity matches this file") == 4
    assert err.count("scanfort: hint:") == 1  # one hint per kind of failure
    assert "decrypted 0 files, 4 failed" in err
    assert not (tmp_path / "x").exists() or not list((tmp_path / "x").rglob("*.*"))

    # tamper one file of each mode; the others still decrypt, exit 1
    key = site[0]
    for victim in (out / "CT_small.dcm", out / "series" / "report.txt.age"):
        data = bytearray(victim.read_bytes())
        data[-5] ^= 0x10
        victim.write_bytes(bytes(data))
    back = tmp_path / "back"
    assert run("decrypt", "-i", str(key), "-o", str(back), str(out)) == 1
    err = capsys.readouterr().err
    assert err.count(AUTH_MESSAGE) == 2
    assert "decrypted 2 files" in err and "2 failed" in err
    assert not (back / "CT_small.dcm").exists()  # never a partial output
    assert not (back / "series" / "report.txt").exists()
    assert (back / "empty.bin").read_bytes() == b""
    assert not [p for p in back.rglob("*") if p.name.endswith(".tmp")]


def test_mode_dicom_on_non_dicom_is_a_clear_error(site, tree, tmp_path, capsys) -> None:
    _, recipient = site
    out = tmp_path / "out"
    code = run("encrypt", "--mode", "dicom", "-r", recipient, "-o", str(out), str(tree))
    assert code == 1
    err = capsys.readouterr().err
    assert "not a DICOM" in err
    assert "--mode auto" in err
    assert (out / "CT_small.dcm").exists() and not (out / "series" / "report.txt").exists()


def test_usage_errors_exit_2(site, tree, tmp_path, capsys) -> None:
    _, recipient = site
    assert run("encrypt", "-r", "age1bogus", "-o", str(tmp_path / "o"), str(tree)) == 2
    assert "scanfort: error:" in capsys.readouterr().err
    assert run("encrypt", "-o", str(tmp_path / "o"), str(tree)) == 2
    assert "no recipient" in capsys.readouterr().err
    assert run("decrypt", "-i", str(tmp_path / "missing.key"), "-o", str(tmp_path), "x") == 2
    (tmp_path / "afile").write_text("x")
    assert run("encrypt", "-r", recipient, "-o", str(tmp_path / "afile"), str(tree)) == 2
    with pytest.raises(SystemExit) as info:
        run("encrypt", "--mode", "bogus", "-r", recipient, "-o", "o", "x")
    assert info.value.code == 2


def test_never_overwrites_an_input(site, tmp_path, capsys) -> None:
    """DICOM mode keeps the name: encrypting into the input's own directory must refuse."""
    _, recipient = site
    src = tmp_path / "CT_small.dcm"
    original = _testdata("CT_small.dcm").read_bytes()
    src.write_bytes(original)
    assert run("encrypt", "-r", recipient, "-o", str(tmp_path), str(src)) == 1
    err = capsys.readouterr().err
    assert f"the output would overwrite the input ({src})" in err  # the path's own case
    assert "other than the input's folder" in err and "exists" not in err
    assert run("encrypt", "--force", "-r", recipient, "-o", str(tmp_path), str(src)) == 1
    assert "overwrite the input" in capsys.readouterr().err
    assert src.read_bytes() == original


def test_outdir_inside_input_is_not_walked(site, tree, capsys) -> None:
    _, recipient = site
    out = tree / "protected"
    assert run("encrypt", "-r", recipient, "-o", str(out), str(tree)) == 0
    capsys.readouterr()
    assert run("encrypt", "-r", recipient, "-o", str(out), str(tree)) == 0  # outputs exist
    err = capsys.readouterr().err.splitlines()
    assert "encrypted 0 files, skipped 4 (first: " in err[-2] and "output exists" in err[-2]
    assert "--force" in err[-1]
    assert run("encrypt", "--force", "-r", recipient, "-o", str(out), str(tree)) == 0
    assert "encrypted 4 files" in capsys.readouterr().err.splitlines()[-1]
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == [
        "CT_small.dcm",
        "MR_small_RLE.dcm",
        "empty.bin.age",
        "report.txt.age",
    ]
    assert os.listdir(tree / "series" / "deep") == ["MR_small_RLE.dcm"]


def test_fifo_is_skipped_and_the_batch_goes_on(site, tree, tmp_path, capsys) -> None:
    _, recipient = site
    os.mkfifo(tree / "pipe")
    out = tmp_path / "out"
    assert run("encrypt", "-r", recipient, "-o", str(out), str(tree)) == 0
    err = capsys.readouterr().err
    assert "skipped" in err and "FIFO" in err and "encrypted 4 files" in err
    assert not (out / "pipe.age").exists()


def test_two_inputs_for_one_output_write_nothing(site, tmp_path, capsys) -> None:
    _, recipient = site
    for d in ("dirA", "dirB"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "IM000001").write_bytes(_testdata("CT_small.dcm").read_bytes())
    out = tmp_path / "out"
    assert run("encrypt", "-r", recipient, "-o", str(out), str(tmp_path / "dirA"),
               str(tmp_path / "dirB")) == 2
    assert "would both be written" in capsys.readouterr().err
    assert not out.exists() or not list(out.rglob("*"))


def test_decrypt_collision_dicom_and_age_of_one_name(site, tmp_path, capsys) -> None:
    key, recipient = site
    src = tmp_path / "src"
    src.mkdir()
    (src / "scan").write_bytes(_testdata("CT_small.dcm").read_bytes())
    enc = tmp_path / "enc"
    assert run("encrypt", "-r", recipient, "-o", str(enc), str(src)) == 0
    assert run("encrypt", "--mode", "file", "-r", recipient, "-o", str(enc), str(src)) == 0
    assert sorted(p.name for p in enc.iterdir()) == ["scan", "scan.age"]
    capsys.readouterr()
    assert run("decrypt", "-i", str(key), "-o", str(tmp_path / "back"), str(enc)) == 2
    assert "would both be written" in capsys.readouterr().err


def test_pseudonym_secret_links_a_patients_studies(site, tmp_path, capsys) -> None:
    from cipher.pseudonym import PseudonymSecret

    _, recipient = site
    secret = PseudonymSecret.generate()
    (tmp_path / "secret").write_text(secret.encode())
    agent = tmp_path / "agent.toml"
    agent.write_text('pseudonym_secret_file = "secret"\n')
    src = _testdata("CT_small.dcm")
    original = pydicom.dcmread(src)
    for n, how in enumerate((["--pseudonym-secret", str(tmp_path / "secret")],
                             ["--agent-config", str(agent)])):
        out = tmp_path / f"out{n}"
        assert run("encrypt", *how, "-r", recipient, "-o", str(out), str(src)) == 0
        ds = pydicom.dcmread(out / "CT_small.dcm")
        assert ds.PatientID == secret.patient_id(str(original.PatientID),
                                                 str(original.get("IssuerOfPatientID", "")))
    assert "no pseudonym secret" not in capsys.readouterr().err
    (tmp_path / "bad").write_text("not a secret")
    assert run("encrypt", "--pseudonym-secret", str(tmp_path / "bad"), "-r", recipient,
               "-o", str(tmp_path / "o3"), str(src)) == 2
    err = capsys.readouterr().err
    assert "not a pseudonym secret" in err and "not a secret" not in err.replace(
        "not a pseudonym secret", "")
    assert run("encrypt", "--profile-options", "retain-everything", "-r", recipient,
               "-o", str(tmp_path / "o4"), str(src)) == 2


def test_dicom_that_dicom_mode_cannot_carry_goes_to_file_mode(site, tmp_path, capsys) -> None:
    key, recipient = site
    raw = _testdata("CT_small.dcm").read_bytes()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cut.dcm").write_bytes(raw[: len(raw) - 100])  # Pixel Data cut short
    out = tmp_path / "out"
    assert run("encrypt", "-r", recipient, "-o", str(out), str(tmp_path / "in")) == 0
    err = capsys.readouterr().err
    assert "file mode (the file is cut" in err
    assert (out / "cut.dcm.age").exists()
    assert run("decrypt", "-i", str(key), "-o", str(tmp_path / "back"), str(out)) == 0
    assert (tmp_path / "back" / "cut.dcm").read_bytes() == raw[: len(raw) - 100]


def test_hostile_bytes_never_give_a_traceback(site, tmp_path, capsys) -> None:
    key, recipient = site
    out = tmp_path / "out"
    assert run("encrypt", "-r", recipient, "-o", str(out), str(_testdata("CT_small.dcm"))) == 0
    data = (out / "CT_small.dcm").read_bytes()
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(40):
        mutant = bytearray(data)
        mutant[(i * 997) % len(mutant)] ^= 0xFF
        (bad / f"m{i:02d}.dcm").write_bytes(bytes(mutant[: len(mutant) - i * 13]))
    capsys.readouterr()
    assert run("decrypt", "-i", str(key), "-o", str(tmp_path / "back"), str(bad)) in (0, 1)
    assert run("inspect", *(str(p) for p in sorted(bad.iterdir()))) in (0, 1)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err


def test_symlink_loop_is_an_error_for_that_entry_only(site, tree, tmp_path, capsys) -> None:
    _, recipient = site
    os.symlink("loop", tree / "loop")  # a link to itself
    out = tmp_path / "out"
    assert run("encrypt", "-r", recipient, "-o", str(out), str(tree)) == 1
    err = capsys.readouterr().err
    assert "loop: too many levels of symbolic links" in err
    assert "encrypted 4 files (2 dicom mode, 2 file mode), 1 failed" in err
