"""The media bucket (Cloudflare R2 in production, S3 from moto locally).

Keys: `assets/<assetId>/<filename>` for staged media, `uploads/<assetId>/<filename>` for files
that clients PUT through a presigned URL (staging copies them to the asset key),
`jobs/<jobId>/…` for analysis and plan JSON, `outputs/<username-slug>/<jobId>/…` for rendered
montages.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from botocore.exceptions import BotoCoreError, ClientError

from ecliptic.aws import media_client
from ecliptic.config import get_settings
from ecliptic.errors import TransientStepError

logger = logging.getLogger(__name__)

# R2 requires every part but the last to have the same size, 5 MiB at least.
PART_SIZE = 8 * 1024 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024
_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}


def slug(text: str | None, fallback: str = "anonymous", max_length: int = 40) -> str:
    """Return a lower-case ASCII slug safe in object keys and file names."""
    if not text:
        return fallback
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    cleaned = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return cleaned[:max_length].strip("-") or fallback


def asset_object_key(asset_id: str, filename: str | None) -> str:
    name = filename or "source"
    stem, dot, extension = name.rpartition(".")
    safe = slug(stem if dot else name, fallback="source")
    suffix = f".{slug(extension, fallback='bin', max_length=8)}" if dot and stem else ""
    return f"assets/{asset_id}/{safe}{suffix}"


def upload_object_key(asset_id: str, filename: str | None) -> str:
    """Return the key a presigned upload writes to; staging copies it to the asset key."""
    return "uploads/" + asset_object_key(asset_id, filename).removeprefix("assets/")


def output_object_key(job_id: str, username: str | None, name: str) -> str:
    return f"outputs/{slug(username)}/{job_id}/{name}"


def _storage_error(action: str, error: Exception) -> TransientStepError:
    return TransientStepError(f"{action} failed in media storage.", detail=str(error))


class MediaStore:
    """Object operations on the media bucket, with errors wrapped in our own types."""

    def __init__(self, bucket: str | None = None) -> None:
        self.bucket = bucket or get_settings().media_bucket
        self.client = media_client()

    def upload_file(self, path: Path, key: str, content_type: str) -> int:
        try:
            self.client.upload_file(
                str(path), self.bucket, key, ExtraArgs={"ContentType": content_type}
            )
        except ClientError as error:
            raise TransientStepError(
                "Uploading to media storage failed.", detail=str(error)
            ) from error
        return path.stat().st_size

    def download_file(self, key: str, path: Path) -> Path:
        try:
            self.client.download_file(self.bucket, key, str(path))
        except ClientError as error:
            raise TransientStepError(
                f"Reading {key} from media storage failed.", detail=str(error)
            ) from error
        return path

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        except (ClientError, BotoCoreError) as error:
            raise _storage_error(f"Writing {key}", error) from error

    def put_json(self, key: str, data: Any) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=json.dumps(data, separators=(",", ":")).encode(),
            ContentType="application/json",
        )

    def get_json(self, key: str) -> Any:
        response = self.client.get_object(Bucket=self.bucket, Key=key)
        return json.loads(response["Body"].read())

    def head(self, key: str) -> dict[str, Any] | None:
        """Return the object's metadata (`ContentLength`, `ContentType`, …), or None if absent."""
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if error.response["Error"]["Code"] in _MISSING_CODES:
                return None
            raise _storage_error(f"Reading {key}", error) from error

    def open_stream(self, key: str) -> IO[bytes] | None:
        """Return a stream of the object's bytes, or None if it does not exist."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if error.response["Error"]["Code"] in _MISSING_CODES:
                return None
            raise _storage_error(f"Reading {key}", error) from error
        return response["Body"]

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as error:
            raise _storage_error(f"Deleting {key}", error) from error

    def object_url(self, key: str) -> str:
        """Return a URL that downloads `key`: the public base URL when set, else presigned."""
        settings = get_settings()
        if settings.public_base_url:
            return f"{settings.public_base_url.rstrip('/')}/{quote(key)}"
        return self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": key},
            ExpiresIn=settings.presign_seconds,
        )

    def presigned_put_url(
        self, key: str, *, content_type: str, content_length: int, expires_in: int
    ) -> str:
        """Return a presigned PUT URL for `key`.

        Content-Type and Content-Length are signed headers, so the upload must send exactly
        these values or the signature does not match.
        """
        return self.client.generate_presigned_url(
            "put_object",
            Params={
                "Bucket": self.bucket,
                "Key": key,
                "ContentType": content_type,
                "ContentLength": content_length,
            },
            ExpiresIn=expires_in,
        )

    def open_multipart(
        self, key: str, content_type: str, part_size: int = PART_SIZE
    ) -> MultipartWriter:
        return MultipartWriter(self, key, content_type, part_size=part_size)


class MultipartWriter:
    """Streams bytes into one object with equal-sized parts; aborts the upload on error.

    At most one part (plus the chunk being written) is held in memory. Objects smaller than
    one part are written with a single PUT when the writer closes.
    """

    def __init__(
        self, store: MediaStore, key: str, content_type: str, part_size: int = PART_SIZE
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (an R2 rule)")
        self.store = store
        self.key = key
        self.content_type = content_type
        self.part_size = part_size
        self.buffer = bytearray()
        self.parts: list[dict[str, Any]] = []
        self.upload_id: str | None = None
        self.size = 0

    def __enter__(self) -> MultipartWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()

    def write(self, chunk: bytes) -> None:
        self.buffer.extend(chunk)
        self.size += len(chunk)
        while len(self.buffer) >= self.part_size:
            with memoryview(self.buffer) as view:
                part = bytes(view[: self.part_size])
            del self.buffer[: self.part_size]
            self._upload_part(part)

    def _upload_part(self, body: bytes) -> None:
        client = self.store.client
        try:
            if self.upload_id is None:
                response = client.create_multipart_upload(
                    Bucket=self.store.bucket, Key=self.key, ContentType=self.content_type
                )
                self.upload_id = response["UploadId"]
            number = len(self.parts) + 1
            response = client.upload_part(
                Bucket=self.store.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                PartNumber=number,
                Body=body,
            )
        except (ClientError, BotoCoreError) as error:
            raise _storage_error(f"Writing {self.key}", error) from error
        self.parts.append({"PartNumber": number, "ETag": response["ETag"]})

    def close(self) -> int:
        """Finish the object and return its size in bytes."""
        client = self.store.client
        try:
            if self.upload_id is None:
                # Small files fit in one request; a multipart upload would be pure overhead.
                client.put_object(
                    Bucket=self.store.bucket,
                    Key=self.key,
                    Body=bytes(self.buffer),
                    ContentType=self.content_type,
                )
            else:
                if self.buffer:
                    self._upload_part(bytes(self.buffer))
                client.complete_multipart_upload(
                    Bucket=self.store.bucket,
                    Key=self.key,
                    UploadId=self.upload_id,
                    MultipartUpload={"Parts": self.parts},
                )
        except (ClientError, BotoCoreError) as error:
            raise _storage_error(f"Writing {self.key}", error) from error
        self.buffer.clear()
        self.upload_id = None
        return self.size

    def abort(self) -> None:
        self.buffer.clear()
        if self.upload_id is not None:
            try:
                self.store.client.abort_multipart_upload(
                    Bucket=self.store.bucket, Key=self.key, UploadId=self.upload_id
                )
            except (ClientError, BotoCoreError):
                # The parts stay until a bucket lifecycle rule aborts incomplete uploads.
                logger.warning("aborting a multipart upload failed", extra={"key": self.key})
            self.upload_id = None


def write_stream(store: MediaStore, key: str, content_type: str, stream: IO[bytes]) -> int:
    """Copy a file-like object into `key` and return its size."""
    with store.open_multipart(key, content_type) as writer:
        while chunk := stream.read(1024 * 1024):
            writer.write(chunk)
        return writer.close()
