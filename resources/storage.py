"""The storage resource: a local folder or an ``s3://`` prefix, as the library's filesystem."""

from typing import Any

import dagster as dg
import pyarrow.fs as pafs
from pydantic import Field

from corpuslab.ingest.storage import S3Options, join, open_fs


class StorageResource(dg.ConfigurableResource):
    """Where raw sources are read: a local root or an S3 prefix (field names as dagster-aws's).

    ``root`` is a local folder or ``s3://bucket/prefix``; the S3 fields mirror
    ``dagster_aws.s3.S3Resource`` so one set of settings configures both. Unset S3 fields fall
    back to the standard AWS environment variables (``AWS_ENDPOINT_URL``, ``AWS_REGION``,
    ``AWS_ACCESS_KEY_ID``...); pass secrets as ``dg.EnvVar``.
    """

    root: str = Field(default="", description="Local folder or s3://bucket/prefix.")
    endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, moto), e.g. http://host:9000."
    )
    region_name: str | None = Field(default=None, description="S3 region.")
    aws_access_key_id: str | None = Field(default=None, description="AWS access key ID.")
    aws_secret_access_key: str | None = Field(default=None, description="AWS secret access key.")
    aws_session_token: str | None = Field(default=None, description="AWS session token.")
    profile_name: str | None = Field(
        default=None, description="Profile in ~/.aws whose credentials to use (via boto3)."
    )
    use_unsigned_session: bool = Field(
        default=False, description="Anonymous access to public buckets."
    )
    max_attempts: int = Field(default=5, description="Attempts per S3 request (with retries).")

    def s3_options(self) -> S3Options:
        """The library's S3 options, a profile's credentials resolved through boto3."""
        key, secret, token = (
            self.aws_access_key_id,
            self.aws_secret_access_key,
            self.aws_session_token,
        )
        if self.profile_name and not key:
            import boto3

            creds = boto3.Session(profile_name=self.profile_name).get_credentials()
            if creds is None:
                raise dg.DagsterInvariantViolationError(
                    f"AWS profile {self.profile_name!r} has no credentials"
                )
            frozen = creds.get_frozen_credentials()
            key, secret, token = frozen.access_key, frozen.secret_key, frozen.token
        return S3Options(
            endpoint_url=self.endpoint_url,
            region=self.region_name,
            access_key_id=key,
            secret_access_key=secret,
            session_token=token,
            anonymous=self.use_unsigned_session,
            max_attempts=self.max_attempts,
        )

    def location(self, path: str = "") -> str:
        """``path`` as an absolute location: URLs and absolute paths as given, else under root."""
        if "://" in path or path.startswith("/") or not self.root:
            return path or self.root
        if not path:
            return self.root
        if self.root.startswith("s3://"):
            return self.root.rstrip("/") + "/" + path.lstrip("/")
        return join(self.root, path)

    def open(self, path: str = "") -> tuple[pafs.FileSystem, str]:
        """The filesystem and the path inside it for ``path`` (default: the root)."""
        options: dict[str, Any] = vars(self.s3_options())
        return open_fs(self.location(path), **options)
