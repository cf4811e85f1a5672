"""The landing zone: where upstream systems drop complete files.

Listing and reading go through pyarrow's filesystem layer, so the same code
reads a local folder (the default) or an object-store prefix (s3://...).
Only complete files count: on a local disk writers write a hidden temporary
name, then rename; on an object store an object only becomes visible once its
upload completes, so it is written under its final name directly.

Object-store options come from the environment (standard AWS_* variables,
MLOPS_STORAGE_*) under explicit ``storage_options``, the same resolution the
Delta tables use, so one set of variables configures both.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import pyarrow.fs as pafs
from dagster import ConfigurableResource
from pydantic import Field

from mlops_assets.home import MlopsHome
from resources.delta_lake import S3_SCHEMES, is_object_store, object_store_options


@dataclass(frozen=True)
class LandedFile:
    name: str
    path: str  # path within the filesystem
    size: int
    mtime_ns: int

    @property
    def signature(self) -> str:
        """Changes when the file is replaced; part of the run key."""
        return f"{self.mtime_ns}-{self.size}"


def is_partial(name: str) -> bool:
    return name.startswith((".", "_")) or name.endswith((".tmp", ".part", ".partial", ".crdownload"))


class LandingZoneResource(ConfigurableResource):
    root: str = Field(default="", description="Landing zone URI; empty means $MLOPS_HOME/landing.")
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        description="Non-secret object_store options over the environment (AWS_*, MLOPS_STORAGE_*); "
        "keep credentials in environment variables.",
    )

    def root_uri(self) -> str:
        return (self.root or str(MlopsHome.from_env().landing)).rstrip("/")

    def uri(self, pipeline: str, *parts: str) -> str:
        return "/".join([self.root_uri(), pipeline, *parts])

    def filesystem(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """The pyarrow filesystem for `uri` and the path within it."""
        if not is_object_store(uri):
            return pafs.LocalFileSystem(), uri.removeprefix("file://")
        options = object_store_options(uri, self.storage_options)
        if uri.startswith(S3_SCHEMES):
            path = uri.split("://", 1)[1]
            if not options.get("aws_region") and not options.get("aws_endpoint_url"):
                # AWS without a configured region: ask S3 where the bucket lives, as delta-rs does
                options["aws_region"] = _bucket_region(path.split("/", 1)[0])
            return _s3_filesystem(tuple(sorted(options.items()))), path
        return pafs.FileSystem.from_uri(uri)

    def list_files(self, pipeline: str, folder: str = "") -> list[LandedFile]:
        """Complete files directly in the pipeline's landing folder (or a subfolder)."""
        uri = self.uri(pipeline, folder) if folder else self.uri(pipeline)
        fs, path = self.filesystem(uri)
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
        return sorted(
            (
                LandedFile(i.base_name, i.path, i.size or 0, i.mtime_ns or 0)
                for i in infos
                if i.type == pafs.FileType.File and not is_partial(i.base_name)
            ),
            key=lambda f: f.name,
        )

    def stat(self, pipeline: str, *parts: str) -> LandedFile | None:
        fs, path = self.filesystem(self.uri(pipeline, *parts))
        info = fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            return None
        return LandedFile(info.base_name, info.path, info.size or 0, info.mtime_ns or 0)

    def read_bytes(self, pipeline: str, *parts: str) -> bytes:
        fs, path = self.filesystem(self.uri(pipeline, *parts))
        with fs.open_input_stream(path) as stream:
            return stream.read()

    def write_bytes(self, pipeline: str, name: str, data: bytes, folder: str = "") -> str:
        """Write a complete file; readers never see a partial one."""
        parts = [folder, name] if folder else [name]
        final_uri = self.uri(pipeline, *parts)
        fs, final = self.filesystem(final_uri)
        if isinstance(fs, pafs.S3FileSystem):
            # an S3 object appears only when its upload completes; a rename would be a copy
            with fs.open_output_stream(final) as out:
                out.write(data)
            return final_uri
        parent = final.rsplit("/", 1)[0]
        fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/.{name}.tmp"
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, final)
        return final_uri


@lru_cache(maxsize=32)
def _bucket_region(bucket: str) -> str:
    return pafs.resolve_s3_region(bucket)


@lru_cache(maxsize=8)
def _s3_filesystem(options: tuple[tuple[str, str], ...]) -> pafs.S3FileSystem:
    """One S3 client per option set; buckets are provisioned, never created by the platform."""
    opts = dict(options)
    endpoint = opts.get("aws_endpoint_url") or opts.get("endpoint_url") or None
    scheme = None
    if endpoint and "://" in endpoint:
        scheme, endpoint = endpoint.split("://", 1)
    elif opts.get("aws_allow_http", "").lower() == "true":
        scheme = "http"
    return pafs.S3FileSystem(
        access_key=opts.get("aws_access_key_id"),
        secret_key=opts.get("aws_secret_access_key"),
        session_token=opts.get("aws_session_token"),
        region=opts.get("aws_region") or "us-east-1",
        endpoint_override=endpoint,
        scheme=scheme,
        force_virtual_addressing=opts.get("aws_virtual_hosted_style_request", "").lower() == "true",
    )
