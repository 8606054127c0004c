"""Where studies live: a local folder or an object-store URI, through pyarrow's filesystems.

Layout under the storage root:
    <name>/spec.yaml            the study file as run (with --set overrides applied)
    <name>/plan.json            the planned trials, written before any trial starts
    <name>/study.json           state of the study (running, interrupted, finished) and its history
    <name>/pretrain/, <name>/main/   Ray Tune experiment folders, one per stage
    <name>/<stage>_trials.json  each trial's state as the driver saw it
    <name>/optuna.db            the Optuna study of a searcher study (SQLite, local storage)
    _artifacts/encoders/<key>/  encoders made by pretraining jobs, shared by every study in the storage
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


class Storage:
    def __init__(self, root: str | os.PathLike):
        root = str(root)
        if "://" in root:
            try:
                self.fs, self.base = pafs.FileSystem.from_uri(root)
            except Exception as error:  # pyarrow raises several types for a bad URI
                raise StudyError(f"--storage {root!r}: not a storage URI pyarrow can open ({error})") from None
            self.root = root.rstrip("/")
        else:
            self.fs, self.base = pafs.LocalFileSystem(), str(Path(root).absolute())
            self.root = self.base
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    def uri(self, *parts: str) -> str:
        """A path or URI for Ray's `storage_path` and for trials on other nodes."""
        return "/".join([self.root, *parts])

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
