"""The S3 object backend (boto3): protected objects in a bucket of any S3-compatible store.

Keys mirror the filesystem layout under an optional prefix (``[prefix]ab/cd/abcd…``). An
upload is received into a spooled temp file and hashed first: only bytes that hash to
their name are sent. Each PUT (or each part of a multipart upload, for objects of at least
``multipart_threshold_bytes``) carries its SHA-256 as ``x-amz-checksum-sha256``, so the S3
server refuses bytes that changed on the way. A HEAD first makes a re-upload a no-op. Reads
download to a temp file, hashing, and refuse an object that no longer matches its name.

Every failure to reach the bucket (connection refused, timeouts, 5xx, refused credentials,
a missing bucket) is an :class:`ObjectStoreUnavailable`: the API answers 503 and the agent
keeps its copy and retries. Credentials come from ``[objects]`` in ``central.toml``, from
``credentials_file``, or from boto3's own chain (environment, instance role); they are
never logged (botocore's logger is held at WARNING so its debug output cannot leak them).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool

from service.errors import ConfigError, ObjectStoreUnavailable
from service.objects import Spooled, StoredObject, spool_upload, verified_or_raise
from service.settings import ObjectsSettings, Settings

log = logging.getLogger("scanfort.central.objects")
_DOWNLOAD_CHUNK = 1 << 20


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def read_credentials_file(path: Path) -> tuple[str, str]:
    """(access key id, secret) from a small TOML file; errors name the key, never a value."""
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"objects.credentials_file: cannot read ({exc.strerror})"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"objects.credentials_file: not TOML ({exc})"]) from exc
    access, secret = raw.get("access_key_id"), raw.get("secret_access_key")
    if not (isinstance(access, str) and access and isinstance(secret, str) and secret):
        raise ConfigError(
            ["objects.credentials_file: needs access_key_id and secret_access_key strings"]
        )
    return access, secret


def _unavailable(exc: Exception, action: str) -> ObjectStoreUnavailable:
    """The typed error for ``exc``: its class and S3 error code only (no request details)."""
    code = ""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))[:64]
    what = f"{type(exc).__name__}{f' {code}' if code else ''}"
    log.warning("object store: %s failed (%s)", action, what)
    return ObjectStoreUnavailable(f"object store unavailable ({action}: {what})")


def _not_found(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in {"404", "NoSuchKey", "NotFound"} or (status == 404 and code != "NoSuchBucket")


class S3Objects:
    """The ``s3`` backend (see :class:`service.objects.ObjectBackend`)."""

    name = "s3"

    def __init__(self, client: Any, conf: ObjectsSettings, tmp_dir: Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        self.client = client
        self.bucket = conf.bucket
        self.prefix = conf.prefix
        self.multipart_threshold = conf.multipart_threshold_bytes
        self.part_size = conf.part_size_bytes
        self.tmp_dir = tmp_dir
        self._errors: tuple[type[Exception], ...] = (BotoCoreError, ClientError)

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Objects:
        import boto3
        from botocore.config import Config

        botocore_log = logging.getLogger("botocore")
        botocore_log.setLevel(max(logging.WARNING, botocore_log.level))
        conf = settings.objects
        access, secret = conf.access_key_id or None, conf.secret_access_key or None
        if conf.credentials_file:
            path = Path(conf.credentials_file).expanduser()
            access, secret = read_credentials_file(
                path if path.is_absolute() else settings.data_dir / path
            )
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=conf.endpoint or None,
            region_name=conf.region or None,
            aws_access_key_id=access,
            aws_secret_access_key=secret,
            config=Config(
                s3={"addressing_style": conf.addressing_style},
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=conf.connect_timeout_s,
                read_timeout=conf.read_timeout_s,
                max_pool_connections=32,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        return cls(client, conf, settings.objects_dir / "tmp")

    def key(self, sha256: str) -> str:
        return f"{self.prefix}{sha256[:2]}/{sha256[2:4]}/{sha256}"

    # -- write ----------------------------------------------------------------------------

    async def put(
        self, sha256: str, chunks: AsyncIterator[bytes], max_bytes: int
    ) -> tuple[int, bool]:
        spooled = await spool_upload(sha256, chunks, max_bytes, self.tmp_dir)
        try:
            created = await run_in_threadpool(self._store, sha256, spooled)
        finally:
            spooled.file.close()
        return spooled.size, created

    def _store(self, sha256: str, spooled: Spooled) -> bool:
        if self.size(sha256) is not None:
            return False  # content-addressed: the same bytes are already there
        key = self.key(sha256)
        try:
            if spooled.size >= self.multipart_threshold:
                self._multipart(key, sha256, spooled)
            else:
                self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=spooled.file, ContentLength=spooled.size,
                    ChecksumSHA256=_b64(spooled.sha256), Metadata={"sha256": sha256},
                    ContentType="application/octet-stream",
                )  # fmt: skip
        except self._errors as exc:
            raise _unavailable(exc, "upload") from exc
        return True

    def _multipart(self, key: str, sha256: str, spooled: Spooled) -> None:
        started = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=key, Metadata={"sha256": sha256},
            ContentType="application/octet-stream", ChecksumAlgorithm="SHA256",
        )  # fmt: skip
        upload_id = started["UploadId"]
        try:
            parts = []
            number = 1
            while part := spooled.file.read(self.part_size):
                reply = self.client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                    Body=part, ChecksumSHA256=_b64(hashlib.sha256(part).digest()),
                )  # fmt: skip
                entry = {"ETag": reply["ETag"], "PartNumber": number}
                if reply.get("ChecksumSHA256"):
                    entry["ChecksumSHA256"] = reply["ChecksumSHA256"]
                parts.append(entry)
                number += 1
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            with contextlib.suppress(*self._errors):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    # -- read -----------------------------------------------------------------------------

    def size(self, sha256: str) -> int | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key(sha256))
        except self._errors as exc:
            if _not_found(exc):
                return None
            raise _unavailable(exc, "head") from exc
        return int(head["ContentLength"])

    def writable(self) -> bool:
        try:
            self.client.head_bucket(Bucket=self.bucket)
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
        except (*self._errors, OSError) as exc:  # type: ignore[misc]
            _unavailable(exc, "health check")
            return False
        return True

    def open_verified(self, sha256: str) -> StoredObject | None:
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self.key(sha256))
        except self._errors as exc:
            if _not_found(exc):
                return None
            raise _unavailable(exc, "download") from exc
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix="down-")
        path = Path(name)

        def cleanup() -> None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

        digest = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in reply["Body"].iter_chunks(_DOWNLOAD_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    fh.write(chunk)
        except (*self._errors, OSError) as exc:  # type: ignore[misc]
            cleanup()
            raise _unavailable(exc, "download") from exc
        except BaseException:
            cleanup()
            raise
        return verified_or_raise(sha256, digest.hexdigest(), path, size, cleanup)
