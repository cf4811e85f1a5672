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

import pyarrow.fs as pafs
from dagster import ConfigurableResource
from pydantic import Field, field_validator

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.home import MlopsHome
from resources.delta_lake import checked_root, pyarrow_filesystem


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

    @field_validator("root", mode="before")  # before: an EnvVar is still itself
    @classmethod
    def _checked_root(cls, root: str) -> str:
        return checked_root(root)

    def root_uri(self) -> str:
        return (self.root or str(MlopsHome.from_env().landing)).rstrip("/")

    def uri(self, pipeline: str, *parts: str) -> str:
        return "/".join([self.root_uri(), pipeline, *parts])

    def filesystem(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """The pyarrow filesystem for `uri` and the path within it."""
        return pyarrow_filesystem(uri, self.storage_options)

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


def reference_signature(decl: PipelineDeclaration, landing: LandingZoneResource) -> str | None:
    """Signature of the landed reference files; None while any is missing."""
    parts = []
    for name, file_name in sorted(decl.landing.reference_tables.items()):
        landed = landing.stat(decl.name, "reference", file_name)
        if landed is None:
            return None
        parts.append(f"{name}={landed.signature}")
    return ",".join(parts)
