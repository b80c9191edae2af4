"""``scanfort keygen | encrypt | decrypt | inspect``: protected scans from the command line.

Inputs are files or directories (walked recursively; relative paths are kept under
``-o OUTDIR``). Every output is written atomically (temporary file in the destination
directory, fsync, rename), so there is never a partial output, and an input is never
overwritten. One failing input does not stop the others; exit code 1 then, with a
summary. Usage errors (bad recipient, unreadable identity file, …) exit with 2.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import io
import json
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import cipher
from cipher import keys
from cipher.errors import (
    AlreadyProtectedError,
    AuthenticationError,
    CipherError,
    FormatError,
    InvalidIdentityError,
    InvalidRecipientError,
    NoIdentityMatchError,
    NotDicomError,
    VerifyError,
)
from cipher.pseudonym import PseudonymSecret
from protocol.durable import atomic_output
from scanfort.batch import Failure, Skipped, default_jobs, run_batch

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["register"]

AGE_SUFFIX = ".age"
MODES = ("auto", "file", "dicom")

class InputIsOutputError(OSError):
    """The output path names the input file itself (encrypting into the input's folder)."""


# One hint per kind of failure, printed once per run after its first error (first match).
_HINTS: dict[type[BaseException], str] = {
    InputIsOutputError: "give an OUTDIR other than the input's folder (-o)",
    NoIdentityMatchError: "decrypt with the identity (-i FILE) of one of the recipients the "
    "file was encrypted to; a damaged recipient stanza looks the same",
    AuthenticationError: "nothing was written for this file; get an intact copy from its source",
    NotDicomError: "use --mode auto (file mode for non-DICOM input) or --mode file",
    VerifyError: "the output did not restore to the input and was not written; report this",
    FormatError: "scanfort decrypt and inspect take files written by scanfort encrypt",
    OSError: "check that the path exists and is readable, and that OUTDIR is writable",
}


class UsageError(Exception):
    """A problem with the command line itself (exit code 2)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


# --------------------------------------------------------------------------- output helpers


def _error(message: str, hint: str | None = None, stream: TextIO | None = None) -> None:
    out = stream or sys.stderr
    out.write(f"scanfort: error: {message}\n")
    if hint:
        out.write(f"scanfort: hint: {hint}\n")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        text = exc.strerror or str(exc)
        return text[:1].lower() + text[1:]  # "no such file…"; paths keep their case
    return str(exc)


def _failure(exc: BaseException) -> Failure:
    """A file's failure as text and the kind of its hint (see :data:`_HINTS`)."""
    if not isinstance(exc, CipherError | OSError):  # a bug: no traceback, no file content
        return Failure(f"internal error ({type(exc).__name__})", None)
    kind = next((k.__name__ for k in _HINTS if isinstance(exc, k)), None)
    return Failure(_describe(exc), kind)


_HINT_TEXT = {kind.__name__: text for kind, text in _HINTS.items()}
_PROTECTED_HINT = "scanfort inspect describes a protected file, scanfort decrypt restores it"


def _run(items: list[tuple[Path, Path]], verb: str, one: Callable[[Path, Path], str],
         args: argparse.Namespace) -> int:
    return run_batch(items, verb, one, _failure, _HINT_TEXT, jobs=args.jobs,
                     quiet=args.quiet, as_json=args.json)


@contextlib.contextmanager
def _atomic_output(target: Path) -> Iterator[BinaryIO]:
    """Write ``target`` through a temporary file in its directory: fsync, rename, fsync dir
    (:func:`protocol.durable.atomic_output`; a new output gets mode 0600).

    On any exception the temporary file is removed and ``target`` is left untouched.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(target, mode=0o600) as fh:
        yield fh


# --------------------------------------------------------------------------- inputs


def _walk(inputs: Sequence[str], outdir: Path) -> Iterator[tuple[Path, Path]]:
    """Yield ``(path, relative output path)`` for every file of ``inputs``, sorted.

    A directory contributes its files recursively, relative to itself; a file its name.
    Files under ``outdir`` are skipped (an output directory inside an input one).
    """
    out_resolved = outdir.resolve()
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                root_path = Path(root)
                if root_path.resolve().is_relative_to(out_resolved):
                    dirs[:] = []
                    continue
                dirs.sort()
                for name in sorted(files):
                    child = root_path / name
                    yield child, child.relative_to(path)
        else:
            yield path, Path(path.name)


def _special_kind(path: Path) -> str | None:
    """``"FIFO"``, ``"device"``, ``"socket"`` for inputs that are not regular files."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # reported when it is opened
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return None


def _collect(inputs: Sequence[str], outdir: Path) -> list[tuple[Path, Path]]:
    found = []
    for path, rel in _walk(inputs, outdir):
        kind = _special_kind(path)
        if kind is not None:  # reading a FIFO or device would block or never end
            sys.stderr.write(f"scanfort: skipped {path}: a {kind}, not a regular file\n")
            continue
        found.append((path, rel))
    if not found:
        raise UsageError("no input files", "give files or directories that contain files")
    return found


def _open_regular(path: Path) -> BinaryIO:
    """Open ``path`` for reading, refusing anything but a regular file without blocking.

    O_NONBLOCK keeps a FIFO swapped in after :func:`_collect` from hanging the batch.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(22, "not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _plan(items: list[tuple[Path, Path]], outdir: Path, target_of: Callable[[Path, Path], Path],
          force: bool) -> list[tuple[Path, Path]]:
    """Map every input to its output path before anything is written.

    Two inputs that would write one output are a usage error (nothing is written). An
    output that exists already is replaced only with ``--force``; otherwise its input is
    skipped (:func:`_skip_existing`), so a rerun of an interrupted batch does the rest.
    """
    claimed: dict[Path, Path] = {}
    planned: list[tuple[Path, Path]] = []
    for path, rel in items:
        try:
            target = outdir / target_of(path, rel)
        except OSError:
            target = outdir / rel  # unreadable: reported when it is processed
        if target in claimed:
            raise UsageError(f"{claimed[target]} and {path} would both be written to {target}",
                             "give inputs whose names differ, or one -o per input directory")
        claimed[target] = path
        planned.append((path, target))
    return planned


def _say_checking(items: list[tuple[Path, Path]], verb: str) -> None:
    """Feedback before the first file is done: mapping many inputs to outputs takes a while."""
    if len(items) > 1:
        sys.stderr.write(f"scanfort: {verb}: {len(items)} inputs; checking their outputs\n")
        sys.stderr.flush()


def _skip_existing(target: Path, force: bool) -> None:
    if not force and (target.exists() or target.is_symlink()):
        raise Skipped("output exists", "give --force to replace outputs that exist")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_outdir(outdir: Path) -> None:
    if outdir.exists() and not outdir.is_dir():
        raise UsageError(f"output directory is a file: {outdir}", "-o takes a directory")


def _guard_target(source: Path, target: Path) -> None:
    if _same_file(source, target):
        raise InputIsOutputError(17, f"the output would overwrite the input ({target})")


# --------------------------------------------------------------------------- keygen


def _identity_text(identity: str, recipient: str) -> str:
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    return f"# created: {created}\n# public key: {recipient}\n{identity}\n"


def _write_new_private(path: Path, text: str) -> None:
    """Create ``path`` (mode 0600) atomically; refuse if it exists (no overwrite, ever)."""
    if path.exists() or path.is_symlink():
        raise UsageError(
            f"{path} already exists", "choose another file; keys are never overwritten"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp_name, path)  # fails if path appeared meanwhile: never overwrites
        except FileExistsError:
            raise UsageError(f"{path} already exists", "choose another file") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)


def _read_identities(files: Sequence[str]) -> list[str]:
    identities: list[str] = []
    for name in files:
        try:
            text = Path(name).read_text()
        except OSError as exc:
            raise UsageError(f"cannot read identity file {name}: {_describe(exc)}") from None
        try:
            identities.extend(keys.parse_identities(text))
        except InvalidIdentityError as exc:
            raise UsageError(
                f"{name}: {exc}",
                "an identity file holds AGE-SECRET-KEY-1… lines (age-keygen format)",
            ) from None
    return identities


def _cmd_keygen(args: argparse.Namespace) -> int:
    try:
        if args.convert:
            identities = _read_identities([args.convert])
            for identity in identities:
                sys.stdout.write(keys.recipient_of(identity) + "\n")
            return 0
        identity, recipient = keys.generate_identity()
        if args.output:
            _write_new_private(Path(args.output), _identity_text(identity, recipient))
            sys.stdout.write(recipient + "\n")
        else:
            sys.stdout.write(_identity_text(identity, recipient))
            sys.stderr.write(f"public key: {recipient}\n")
        return 0
    except UsageError as exc:
        _error(str(exc), exc.hint)
        return 2
    except OSError as exc:
        _error(_describe(exc), _HINTS[OSError])
        return 1


# --------------------------------------------------------------------------- encrypt


def _recipients(args: argparse.Namespace) -> list[str]:
    found = list(args.recipient or [])
    for name in args.recipients_file or []:
        try:
            lines = Path(name).read_text().splitlines()
        except OSError as exc:
            raise UsageError(f"cannot read recipients file {name}: {_describe(exc)}") from None
        found += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not found:
        raise UsageError("no recipient", "give -r age1… (the site's public key) or -R FILE")
    try:
        keys.parse_recipients(found)
    except InvalidRecipientError as exc:
        raise UsageError(
            str(exc), "recipients look like age1… (scanfort keygen -y IDENTITY)"
        ) from None
    return found


def _encrypt_mode(path: Path, mode: str) -> str:
    if mode != "auto":
        return mode
    with _open_regular(path) as src:
        return cipher.DICOM_MODE if cipher.is_dicom_with_pixels(src) else cipher.FILE_MODE


def _encrypt_target(rel: Path, mode: str) -> Path:
    return rel if mode == cipher.DICOM_MODE else rel.with_name(rel.name + AGE_SUFFIX)


def _encrypt_one(
    path: Path,
    target: Path,
    recipients: list[str],
    mode: str,
    policy: cipher.DicomPolicy,
    force: bool,
) -> str:
    with _open_regular(path) as src:
        _guard_target(path, target)
        _skip_existing(target, force)
        chosen = mode
        if mode == "auto":  # decided by _plan, which named the target after it
            planned_file = target.name == path.name + AGE_SUFFIX
            chosen = cipher.FILE_MODE if planned_file else cipher.DICOM_MODE
        if chosen == cipher.DICOM_MODE:
            out = io.BytesIO()  # DICOM mode works in memory anyway: one parse, then write
            try:
                cipher.protect(src, out, recipients, mode=chosen, policy=policy)
            except AlreadyProtectedError:
                raise Skipped("already protected (dicom mode)", _PROTECTED_HINT) from None
            except (NotDicomError, FormatError) as exc:
                if mode != "auto":
                    raise
                # DICOM that DICOM mode cannot carry: file mode, and say why.
                chosen = cipher.FILE_MODE
                target = target.with_name(target.name + AGE_SUFFIX)
                _skip_existing(target, force)
                sys.stderr.write(f"scanfort: note: {path}: file mode ({exc})\n")
                src.seek(0)
            else:
                with _atomic_output(target) as dst:
                    dst.write(out.getbuffer())
                return chosen
        try:
            already: str | None = cipher.detect_mode(src)  # file mode would wrap it again
        except CipherError:
            already = None
        if already is not None:
            raise Skipped(f"already protected ({already} mode)", _PROTECTED_HINT)
        with _atomic_output(target) as dst:
            cipher.protect(src, dst, recipients, mode=chosen, policy=policy)
    return chosen


def _pseudonym_secret(args: argparse.Namespace) -> PseudonymSecret | None:
    name = args.pseudonym_secret
    if name is None and args.agent_config:
        try:
            with open(args.agent_config, "rb") as fh:
                config = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"cannot read agent config {args.agent_config}: "
                             f"{_describe(exc) if isinstance(exc, OSError) else exc}") from None
        value = config.get("pseudonym_secret_file")
        if value is None:
            raise UsageError(f"{args.agent_config} sets no pseudonym_secret_file",
                             "scanfort agent enroll writes it; or give --pseudonym-secret FILE")
        name = str(Path(args.agent_config).parent / value)
    if name is None:
        return None
    try:
        return PseudonymSecret.parse(Path(name).read_text())
    except OSError as exc:
        raise UsageError(f"cannot read pseudonym secret {name}: {_describe(exc)}") from None
    except ValueError as exc:
        raise UsageError(f"{name}: {exc}",
                         "scanfort central init writes the site's secret") from None


def _policy(args: argparse.Namespace) -> cipher.DicomPolicy:
    options = [o.strip() for o in args.profile_options.split(",") if o.strip()]
    if args.replace_uids:
        options = [o for o in options if o != "retain-uids"]
    try:
        return cipher.DicomPolicy.from_names(args.policy, options, _pseudonym_secret(args))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _cmd_encrypt(args: argparse.Namespace) -> int:
    try:
        recipients = _recipients(args)
        outdir = Path(args.output)
        _check_outdir(outdir)
        policy = _policy(args)
        items = _collect(args.inputs, outdir)
        _say_checking(items, "encrypt")
        planned = _plan(items, outdir, lambda p, rel: _encrypt_target(
            rel, _encrypt_mode(p, args.mode)), args.force)
    except UsageError as exc:
        _error(str(exc), exc.hint)
        return 2
    if policy.pseudonym_secret is None and args.mode != "file" and args.policy == "profile":
        sys.stderr.write("scanfort: note: no pseudonym secret: in DICOM mode each study becomes "
                         "its own pseudonymous patient (--pseudonym-secret FILE links a "
                         "patient's studies)\n")
    return _run(
        planned,
        "encrypted",
        lambda p, target: _encrypt_one(p, target, recipients, args.mode, policy, args.force),
        args,
    )


# --------------------------------------------------------------------------- decrypt


def _decrypt_target(path: Path, rel: Path) -> Path:
    with _open_regular(path) as src:
        try:
            mode = cipher.detect_mode(src)
        except CipherError:
            return rel  # not protected: reported when it is processed
    if mode == cipher.FILE_MODE and rel.suffix == AGE_SUFFIX:
        return rel.with_name(rel.name[: -len(AGE_SUFFIX)])
    return rel


def _decrypt_one(path: Path, target: Path, identities: list[str], force: bool) -> str:
    with _open_regular(path) as src:
        _guard_target(path, target)
        _skip_existing(target, force)
        with _atomic_output(target) as dst:
            return cipher.unprotect(src, dst, identities).mode


def _cmd_decrypt(args: argparse.Namespace) -> int:
    try:
        identities = _read_identities(args.identity)
        outdir = Path(args.output)
        _check_outdir(outdir)
        items = _collect(args.inputs, outdir)
        _say_checking(items, "decrypt")
        planned = _plan(items, outdir, _decrypt_target, args.force)
    except UsageError as exc:
        _error(str(exc), exc.hint)
        return 2
    return _run(planned, "decrypted",
                lambda p, target: _decrypt_one(p, target, identities, args.force), args)


# --------------------------------------------------------------------------- inspect


def _format_text(path: str, info: dict[str, Any]) -> str:
    lines = [f"{path}:"]
    for key, value in info.items():
        if isinstance(value, dict):
            lines.append(f"  {key}:")
            lines += [f"    {k}: {v}" for k, v in value.items()]
        elif isinstance(value, list):
            lines.append(f"  {key}: {', '.join(str(v) for v in value) or '-'}")
        else:
            lines.append(f"  {key}: {value}")
    return "\n".join(lines) + "\n"


def _cmd_inspect(args: argparse.Namespace) -> int:
    results: dict[str, Any] = {}
    hinted: set[str] = set()
    failed = 0
    for name in args.files:
        try:
            with _open_regular(Path(name)) as src:
                info = cipher.inspect(src)
        except Exception as exc:  # never a traceback for one odd file
            failed += 1
            failure = _failure(exc)
            hint = _HINT_TEXT.get(failure.kind or "") if failure.kind not in hinted else None
            hinted.add(failure.kind or "")
            _error(f"{name}: {failure.message}", hint)
            continue
        results[name] = info
        if not args.json:
            sys.stdout.write(_format_text(name, info))
    if args.json:
        payload: Any = results[args.files[0]] if len(args.files) == 1 and results else results
        sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return 1 if failed else 0


# --------------------------------------------------------------------------- registration


def _batch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR",
                   help="directory for the outputs (relative paths of directory inputs kept)")
    p.add_argument("--force", action="store_true",
                   help="replace outputs that exist (default: skip their inputs and say so)")
    p.add_argument("-j", "--jobs", type=int, default=default_jobs(), metavar="N",
                   help="files processed in parallel (default: %(default)s, the CPUs here)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar: a one-line summary every few seconds instead")
    p.add_argument("--json", action="store_true",
                   help="one result per input as JSON on stdout (progress lines on stderr)")


def register(subparsers: Any) -> None:
    """Add ``keygen``, ``encrypt``, ``decrypt`` and ``inspect`` to the ``scanfort`` parser."""
    p = subparsers.add_parser(
        "keygen",
        help="create an age identity (private key) and print its recipient",
        description="Create an age X25519 identity. With -o, write it to FILE (mode 0600, "
        "never overwriting) and print the recipient (public key) alone on stdout.",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument("-o", "--output", metavar="FILE", help="write the identity to FILE")
    group.add_argument(
        "-y", dest="convert", metavar="FILE", help="print the recipient of identity FILE"
    )
    p.set_defaults(func=_cmd_keygen)

    p = subparsers.add_parser(
        "encrypt",
        help="protect scans for one or more recipients",
        description="Protect files and directories (recursively) into OUTDIR. File mode "
        "writes NAME.age (an age file); DICOM mode keeps NAME and writes a valid DICOM file "
        "whose attributes follow the PS3.15 basic profile (patients replaced by keyed "
        "pseudonyms; originals inside the encrypted blob) and whose Pixel Data is "
        "enciphered; decrypt gives back the original file byte for byte. Without a "
        "pseudonym secret, DICOM mode makes each study its own pseudonymous patient "
        "(patients never merge in a PACS, but one patient's studies are not linked). "
        "Every output is proven to restore before it is written.",
    )
    p.add_argument(
        "-r", "--recipient", action="append", metavar="RECIPIENT", help="age1… (repeatable)"
    )
    p.add_argument(
        "-R",
        "--recipients-file",
        action="append",
        metavar="FILE",
        help="file of recipients, one per line (repeatable)",
    )
    p.add_argument("--mode", choices=MODES, default="auto",
                   help="auto: DICOM mode for DICOM files with pixels, file mode for the rest")
    p.add_argument("--policy", choices=("profile", "pixels-only"), default="profile",
                   help="DICOM mode: the PS3.15 profile (default) or Pixel Data only")
    p.add_argument("--profile-options", default="retain-uids,retain-long-full-dates",
                   metavar="LIST", help="DICOM mode: comma-separated profile options (default: "
                   "retain-uids,retain-long-full-dates; also retain-patient-chars, "
                   "retain-device-identity, retain-institution-identity, clean-descriptors, "
                   "retain-safe-private; empty for the strictest)")
    p.add_argument("--replace-uids", action="store_true",
                   help="DICOM mode: drop retain-uids (UIDs replaced; restored on decrypt)")
    p.add_argument("--pseudonym-secret", metavar="FILE",
                   help="the site's pseudonymisation secret (written by scanfort central init)")
    p.add_argument("--agent-config", metavar="FILE",
                   help="take the pseudonym secret named by this agent config")
    _batch_options(p)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="files and directories (walked recursively)")
    p.set_defaults(func=_cmd_encrypt)

    p = subparsers.add_parser(
        "decrypt",
        help="restore protected scans with an identity",
        description="Remove both layers of protected files (file or DICOM mode) into OUTDIR.",
    )
    p.add_argument(
        "-i", "--identity", action="append", required=True, metavar="IDENTITY",
        help="identity file (repeatable)",
    )  # fmt: skip
    _batch_options(p)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="files and directories (walked recursively)")
    p.set_defaults(func=_cmd_decrypt)

    p = subparsers.add_parser(
        "inspect",
        help="describe a protected file without any key",
        description="Mode, format version, DICOM policy and options, number of recipients, "
        "sizes and kept UIDs.",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("files", nargs="+", metavar="FILE", help="protected files")
    p.set_defaults(func=_cmd_inspect)
