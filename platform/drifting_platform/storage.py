"""S3-compatible object storage (AWS S3, MinIO, Ceph, ...): the one place for S3 plumbing.

Everything that reads or writes ``s3://`` goes through here: Parquet shards (pyarrow), Ray
Train checkpoints and results (``storage_path``, a pyarrow filesystem handed to Ray) and
MLflow artifacts (boto3 inside MLflow).

Configuration comes from the standard AWS environment only, never from experiment configs:

- endpoint: ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL`` (what boto3 itself reads),
  e.g. ``http://127.0.0.1:9000`` for a local MinIO; unset = AWS. MLflow reads
  ``MLFLOW_S3_ENDPOINT_URL`` first (``configure_mlflow_env`` sets it from the AWS variables
  when it is unset);
- region: ``AWS_DEFAULT_REGION``, else ``AWS_REGION``, else ``us-east-1``;
- credentials: the AWS default chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
  ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and ``~/.aws``, instance or pod roles). They are
  never passed around as arguments, so they cannot end up in params, tags or logs; an
  endpoint or ``s3://`` URI with ``user:password@`` in it is refused.

pyarrow paths on an S3 filesystem have no scheme (``bucket/key``); ``s3://bucket/key`` is
the user-facing form, and errors name that form.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union
from urllib.parse import urlsplit

PathLike = Union[str, "os.PathLike[str]"]

SCHEME = "s3://"
ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
MLFLOW_ENDPOINT_VAR = "MLFLOW_S3_ENDPOINT_URL"
DEFAULT_REGION = "us-east-1"


class StorageError(ValueError):
    """A storage location or endpoint that cannot be used (the message never holds a secret)."""


def is_s3(uri: object) -> bool:
    """True for an ``s3://`` URI (``s3a://`` / ``s3n://`` too)."""
    return isinstance(uri, (str, os.PathLike)) and os.fspath(uri).lower().startswith(("s3://", "s3a://", "s3n://"))


def check_no_credentials(url: str, what: str) -> None:
    """Refuse ``scheme://user:password@host`` (StorageError naming ``what``, not the URL)."""
    if "@" in urlsplit(url).netloc:
        raise StorageError(
            f"{what} must not hold credentials (user:password@); set AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY or an AWS profile instead"
        )


def split_s3(uri: PathLike) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    uri = os.fspath(uri)
    if not is_s3(uri):
        raise StorageError(f"{uri!r} is not an s3:// URI")
    check_no_credentials(uri, "an s3:// URI")
    rest = uri.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri!r}: no bucket name")
    return bucket, key.rstrip("/")


def s3_path(uri: PathLike) -> str:
    """The pyarrow path of an ``s3://`` URI: ``s3://bucket/key/`` -> ``bucket/key``."""
    bucket, key = split_s3(uri)
    return f"{bucket}/{key}".rstrip("/")


def s3_uri(path: str) -> str:
    """The inverse of ``s3_path``: ``bucket/key`` -> ``s3://bucket/key``."""
    return SCHEME + path.lstrip("/")


def s3_endpoint(*, for_mlflow: bool = False) -> Optional[str]:
    """The custom S3 endpoint URL from the environment (None: AWS itself)."""
    names = ((MLFLOW_ENDPOINT_VAR,) if for_mlflow else ()) + ENDPOINT_VARS
    for name in names:
        value = (os.environ.get(name) or "").strip()
        if value:
            check_no_credentials(value, name)
            return value
    return None


def s3_region() -> str:
    """``AWS_DEFAULT_REGION``, else ``AWS_REGION``, else us-east-1."""
    return (os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or DEFAULT_REGION).strip()


def s3_filesystem(endpoint: Optional[str] = None, *, region: Optional[str] = None):
    """A ``pyarrow.fs.S3FileSystem`` for ``endpoint`` (default: ``s3_endpoint()``).

    ``http://host:port`` -> ``endpoint_override="host:port", scheme="http"`` (path-style
    addressing, what MinIO and moto expect). Credentials come from the AWS default chain;
    the filesystem pickles without them (pyarrow keeps the chain, not the keys), so it is
    safe to hand to Ray workers."""
    from pyarrow import fs as pafs

    endpoint = endpoint or s3_endpoint()
    kwargs: dict = {"region": region or s3_region()}
    if endpoint:
        check_no_credentials(endpoint, "the S3 endpoint")
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise StorageError(f"S3 endpoint {endpoint!r}: expected http(s)://host[:port]")
        kwargs["endpoint_override"] = parts.netloc + parts.path.rstrip("/")
        kwargs["scheme"] = parts.scheme
    return pafs.S3FileSystem(**kwargs)


def filesystem_and_path(uri: PathLike, filesystem=None):
    """``(filesystem, path)`` for ``uri``: an S3 filesystem and ``bucket/key`` for ``s3://``
    (``filesystem`` when given, else ``s3_filesystem()``), ``(filesystem, uri)`` otherwise
    (None: a local path, for the caller's own file handling)."""
    if is_s3(uri):
        return (filesystem if filesystem is not None else s3_filesystem()), s3_path(uri)
    return filesystem, os.fspath(uri)


def boto3_client(endpoint: Optional[str] = None, *, region: Optional[str] = None):
    """A boto3 S3 client for ``endpoint`` (default ``s3_endpoint()``) in ``s3_region()``;
    credentials from the AWS default chain."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint or s3_endpoint(), region_name=region or s3_region())


def configure_mlflow_env() -> Optional[str]:
    """Point MLflow's S3 artifact store at the custom endpoint: sets
    ``MLFLOW_S3_ENDPOINT_URL`` from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` when it is
    unset (boto3 would read those itself; this makes older clients and MLflow's own checks
    agree). Returns the endpoint MLflow uses, or None."""
    current = s3_endpoint(for_mlflow=True)
    if current and not os.environ.get(MLFLOW_ENDPOINT_VAR):
        os.environ[MLFLOW_ENDPOINT_VAR] = current
    return current


def ray_storage(storage_path: PathLike):
    """``(storage_path, storage_filesystem)`` for a Ray ``RunConfig``: for ``s3://bucket/p``,
    ``("bucket/p", s3_filesystem())`` (Ray wants the prefix stripped when it is given a
    filesystem); for a local path, ``(absolute path, None)``."""
    if is_s3(storage_path):
        return s3_path(storage_path), s3_filesystem()
    return str(Path(storage_path).expanduser().resolve()), None
