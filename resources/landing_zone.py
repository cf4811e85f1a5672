"""The landing zone: where upstream systems drop complete files.

Listing and reading go through pyarrow's filesystem layer, so the same code
reads a local folder (the default) or an object-store prefix (s3://...).
Only complete files count: writers write a hidden temporary name, then rename.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.fs as pafs
from dagster import ConfigurableResource
from pydantic import Field

from mlops_assets.home import MlopsHome


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
    storage_options: dict[str, str] = Field(default_factory=dict)

    def root_uri(self) -> str:
        return (self.root or str(MlopsHome.from_env().landing)).rstrip("/")

    def uri(self, pipeline: str, *parts: str) -> str:
        return "/".join([self.root_uri(), pipeline, *parts])

    def filesystem(self, uri: str) -> tuple[pafs.FileSystem, str]:
        if "://" not in uri:
            return pafs.LocalFileSystem(), uri
        if uri.startswith("s3://") and self.storage_options:
            opts = {k.lower(): v for k, v in self.storage_options.items()}
            fs = pafs.S3FileSystem(
                access_key=opts.get("aws_access_key_id"),
                secret_key=opts.get("aws_secret_access_key"),
                endpoint_override=opts.get("aws_endpoint_url") or opts.get("endpoint_url"),
                region=opts.get("aws_region", "us-east-1"),
                allow_bucket_creation=True,
            )
            return fs, uri.removeprefix("s3://")
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
        """Write a complete file: a hidden temporary name first, then a rename."""
        parts = [folder, name] if folder else [name]
        final_uri = self.uri(pipeline, *parts)
        fs, final = self.filesystem(final_uri)
        parent = final.rsplit("/", 1)[0]
        fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/.{name}.tmp"
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, final)
        return final_uri
