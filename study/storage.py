"""Where studies live: a local folder or an object-store URI, through pyarrow's filesystems.

Layout under the storage root:
    <name>/spec.yaml            the study file as run (with --set overrides applied)
    <name>/plan.json            the planned trials, written before any trial starts
    <name>/study.json           state of the study (running, interrupted, finished) and its history
    <name>/pretrain/, <name>/main/   Ray Tune experiment folders, one per stage
    <name>/<stage>_trials.json  each trial's state as the driver saw it
    <name>/optuna.db            the Optuna study of a searcher study (SQLite, local storage)
    <name>/driver.lock          flocked by the driver running the study (`lock` on an object store)
    _artifacts/encoders/<key>/  encoders made by pretraining jobs, shared by every study in the storage

A URI may carry pyarrow's query parameters, e.g. an S3-compatible server:
`s3://bucket/prefix?endpoint_override=host:9000&scheme=http`. They stay at the end of every
URI made from it (`uri()`), so a trial on any node opens the same storage from the URI alone.
"""

from __future__ import annotations

import difflib
import json
import os
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from study.errors import StudyError

ARTIFACTS = "_artifacts"


def default_storage() -> str:
    return os.environ.get("SEGSTUDY_STORAGE") or str(Path("studies").absolute())


def split_uri(path_or_uri: str) -> tuple[str, str]:
    """(location, query): `s3://b/p?scheme=http` gives ("s3://b/p", "?scheme=http"); a local path has no query."""
    if "://" not in path_or_uri:
        return path_or_uri, ""
    location, mark, query = path_or_uri.partition("?")
    return location, mark + query


def open_uri(path_or_uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path on it) of a local path or a URI, its query parameters included."""
    if "://" not in path_or_uri:
        return pafs.LocalFileSystem(), path_or_uri
    return pafs.FileSystem.from_uri(path_or_uri)


class Storage:
    def __init__(self, root: str | os.PathLike):
        root = str(root)
        if "://" in root:
            location, query = split_uri(root)
            self.root = location.rstrip("/") + query
            try:
                self.fs, self.base = open_uri(root)
            except OSError as error:  # e.g. resolving an S3 bucket's region on an endpoint out of reach
                raise StudyError(f"--storage {root!r}: cannot reach the storage ({_one_line(error)}); "
                                 f"check the endpoint and the credentials") from None
            except Exception as error:  # pyarrow raises several types for a bad URI
                raise StudyError(f"--storage {root!r}: not a storage URI pyarrow can open ({_one_line(error)})") from None
            self.base = self.base.rstrip("/")
        else:
            self.fs, self.base = pafs.LocalFileSystem(), str(Path(root).absolute())
            self.root = self.base
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)
        if self.fs.type_name in ("s3", "gcs"):
            self._check_bucket()

    def _check_bucket(self) -> None:
        """An unreachable endpoint or a missing bucket, said in one line before anything starts."""
        bucket = self.base.split("/", 1)[0]
        try:
            info = self.fs.get_file_info(bucket)
        except OSError as error:
            raise StudyError(f"--storage {self.root!r}: cannot open bucket {bucket!r} ({_one_line(error)}); "
                             f"check the endpoint and the credentials") from None
        if info.type == pafs.FileType.NotFound:
            raise StudyError(f"--storage {self.root!r}: bucket {bucket!r} does not exist; create it first")

    def uri(self, *parts: str) -> str:
        """A path or URI for trials on other nodes and for the user (a URI keeps its query at the end)."""
        location, query = split_uri(self.root)
        return "/".join([location, *parts]) + query

    def path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def read_text(self, *parts: str) -> str:
        with self.fs.open_input_stream(self.path(*parts)) as stream:
            return stream.read().decode()

    def read_json(self, *parts: str, default=None):
        if not self.exists(*parts):
            return default
        return json.loads(self.read_text(*parts))

    def write_text(self, text: str, *parts: str) -> None:
        """Atomic on local disk (temp file + rename); an object-store put is atomic already."""
        target = self.path(*parts)
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        if not self.is_local:
            with self.fs.open_output_stream(target) as stream:
                stream.write(text.encode())
            return
        temporary = f"{target}.{uuid.uuid4().hex}.tmp"
        with open(temporary, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)

    def write_json(self, value, *parts: str) -> None:
        self.write_text(json.dumps(value, indent=1, sort_keys=True, default=str), *parts)

    def upload(self, local_file: str | os.PathLike, *parts: str) -> None:
        target = self.path(*parts)
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        temporary = f"{target}.{uuid.uuid4().hex}.tmp" if self.is_local else target
        pafs.copy_files(str(local_file), temporary, destination_filesystem=self.fs)
        if self.is_local:
            os.replace(temporary, target)

    def list_dirs(self, *parts: str) -> list[str]:
        if not self.exists(*parts):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(*parts)))
        return sorted(info.base_name for info in infos if info.type == pafs.FileType.Directory)

    def studies(self) -> list[str]:
        return [name for name in self.list_dirs() if name != ARTIFACTS and self.exists(name, "plan.json")]

    def require_study(self, name: str) -> None:
        if not self.exists(name, "plan.json"):
            known = self.studies()
            listing = ", ".join(known) if known else "none"
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise StudyError(f"no study named {name!r} in storage {self.root} (known studies: {listing}){hint}")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
