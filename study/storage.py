"""Where studies live: a local folder or an object-store URI, through pyarrow's filesystems.

Layout under the storage root (the README's "Where things are" says which files are caches):
    <name>/plan.json            the plan: everything the study runs, written before any trial starts
    <name>/spec.yaml            the study file as run (a copy; the plan holds it too, with its sha256)
    <name>/study.json           the study's state as its last driver left it, and the history of drivers
    <name>/pretrain/, <name>/main/   Ray Tune experiment folders, one per stage; a trial folder per trial
    <name>/events.jsonl         what the drivers saw of each trial (a cache: rebuilt from the folders)
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
from functools import cached_property
from pathlib import Path

from study.errors import StudyError
from study.names import check_name, is_name

ARTIFACTS = "_artifacts"
# A folder is a study when it holds one of these (a damaged study still shows up).
STUDY_MARKERS = ("plan.json", "spec.yaml", "study.json")


def default_storage() -> str:
    return os.environ.get("SEGSTUDY_STORAGE") or str(Path("studies").absolute())


def split_uri(path_or_uri: str) -> tuple[str, str]:
    """(location, query): `s3://b/p?scheme=http` gives ("s3://b/p", "?scheme=http"); a local path has no query."""
    if "://" not in path_or_uri:
        return path_or_uri, ""
    location, mark, query = path_or_uri.partition("?")
    return location, mark + query


def open_uri(path_or_uri: str):
    """(pyarrow filesystem, path on it) of a local path or a URI, its query parameters included."""
    import pyarrow.fs as pafs

    if "://" not in path_or_uri:
        return pafs.LocalFileSystem(), path_or_uri
    return pafs.FileSystem.from_uri(path_or_uri)


def output_folder(path: str | os.PathLike, option: str) -> Path:
    """A folder to write into, created if needed; one line naming `option` and the path when it cannot be."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise StudyError(f"{option} {folder}: a file is there; expected a folder to write into")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StudyError(f"{option} {folder}: cannot create the folder ({error.strerror or error})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StudyError(f"{option} {folder}: the folder is not writable")
    return folder


def read_text_at(path_or_uri: str) -> str:
    """A file's text by its path or URI (a checkpoint's trial.json, say); a StudyError naming it otherwise."""
    filesystem, path = open_uri(path_or_uri)
    try:
        with filesystem.open_input_stream(path) as stream:
            return stream.read().decode()
    except (OSError, UnicodeDecodeError) as error:
        raise StudyError(f"{path_or_uri}: cannot be read ({_one_line(error)})") from None


class Storage:
    """A storage root. On a local disk, reads go through os directly (quick, no pyarrow import: `study status`
    answers fast); an object store, copies and Tune use pyarrow's filesystem (`fs`)."""

    def __init__(self, root: str | os.PathLike):
        root = str(root)
        if "://" in root:
            location, query = split_uri(root)
            self.root = location.rstrip("/") + query
            try:
                filesystem, self.base = open_uri(root)
            except OSError as error:  # e.g. resolving an S3 bucket's region on an endpoint out of reach
                raise StudyError(f"--storage {root!r}: cannot reach the storage ({_one_line(error)}); "
                                 f"check the endpoint and the credentials") from None
            except Exception as error:  # pyarrow raises several types for a bad URI
                raise StudyError(f"--storage {root!r}: not a storage URI pyarrow can open "
                                 f"({_one_line(error)})") from None
            self.__dict__["fs"] = filesystem
            self.base = self.base.rstrip("/")
            self.is_local = filesystem.type_name == "local"
            if filesystem.type_name in ("s3", "gcs"):
                self._check_bucket()
        else:
            if not root.strip():
                raise StudyError("--storage: expected a folder or a URI, got an empty string")
            self.base = str(Path(root).expanduser().absolute())
            self.root = self.base
            self.is_local = True
            if Path(self.base).exists() and not Path(self.base).is_dir():
                raise StudyError(f"--storage {root!r}: {self.base} is a file, not a folder of studies")

    @cached_property
    def fs(self):
        """The pyarrow filesystem (local storage: made on first use)."""
        import pyarrow.fs as pafs

        return pafs.LocalFileSystem()

    def _check_bucket(self) -> None:
        """An unreachable endpoint or a missing bucket, said in one line before anything starts."""
        import pyarrow.fs as pafs

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
        if self.is_local:
            return os.path.lexists(self.path(*parts))
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def read_bytes(self, *parts: str) -> bytes:
        if self.is_local:
            with open(self.path(*parts), "rb") as handle:
                return handle.read()
        with self.fs.open_input_stream(self.path(*parts)) as stream:
            return stream.read()

    def read_text(self, *parts: str) -> str:
        """The file's text; a StudyError naming it when it cannot be read or is not UTF-8."""
        try:
            data = self.read_bytes(*parts)
        except FileNotFoundError:
            raise StudyError(f"{self.uri(*parts)}: no such file") from None
        except OSError as error:
            raise StudyError(f"{self.uri(*parts)}: cannot be read ({_one_line(error)})") from None
        try:
            return data.decode()
        except UnicodeDecodeError as error:
            raise StudyError(f"{self.uri(*parts)}: not UTF-8 text (byte {error.start})") from None

    def read_json(self, *parts: str, default=None):
        """The file's JSON; `default` when it is missing; a StudyError naming it when it is damaged."""
        if not self.exists(*parts):
            return default
        text = self.read_text(*parts)
        try:
            return json.loads(text)
        except ValueError as error:
            raise StudyError(f"{self.uri(*parts)}: damaged JSON ({error})") from None

    def write_text(self, text: str, *parts: str) -> None:
        """Atomic on local disk (temp file + rename); an object-store put is atomic already."""
        target = self.path(*parts)
        if not self.is_local:
            self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            with self.fs.open_output_stream(target) as stream:
                stream.write(text.encode())
            return
        os.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        temporary = f"{target}.{uuid.uuid4().hex}.tmp"
        with open(temporary, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)

    def append_text(self, text: str, *parts: str) -> None:
        """Local storage only: append and flush (the line survives a killed process)."""
        target = self.path(*parts)
        os.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        with open(target, "a") as handle:
            handle.write(text)
            handle.flush()

    def write_json(self, value, *parts: str) -> None:
        self.write_text(json.dumps(value, indent=1, sort_keys=True, default=str), *parts)

    def delete(self, *parts: str) -> None:
        if self.is_local:
            os.unlink(self.path(*parts))
        else:
            self.fs.delete_file(self.path(*parts))

    def upload(self, local_file: str | os.PathLike, *parts: str) -> None:
        import pyarrow.fs as pafs

        target = self.path(*parts)
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        temporary = f"{target}.{uuid.uuid4().hex}.tmp" if self.is_local else target
        pafs.copy_files(str(local_file), temporary, destination_filesystem=self.fs)
        if self.is_local:
            os.replace(temporary, target)

    def copy_in(self, source_uri: str, *parts: str) -> None:
        """Copy a file given by path or URI into the storage (written then renamed on local disk)."""
        import pyarrow.fs as pafs

        filesystem, path = open_uri(source_uri)
        target = self.path(*parts)
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        temporary = f"{target}.{uuid.uuid4().hex}.tmp" if self.is_local else target
        pafs.copy_files(path, temporary, source_filesystem=filesystem, destination_filesystem=self.fs)
        if self.is_local:
            os.replace(temporary, target)

    def list_dirs(self, *parts: str) -> list[str]:
        return self._list(parts, directories=True)

    def list_files(self, *parts: str) -> list[str]:
        return self._list(parts, directories=False)

    def _list(self, parts: tuple, directories: bool) -> list[str]:
        if self.is_local:
            try:
                with os.scandir(self.path(*parts)) as entries:
                    return sorted(e.name for e in entries if e.is_dir() == directories
                                  and (directories or e.is_file()))
            except (FileNotFoundError, NotADirectoryError):
                return []
        import pyarrow.fs as pafs

        if not self.exists(*parts):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(*parts)))
        wanted = pafs.FileType.Directory if directories else pafs.FileType.File
        return sorted(info.base_name for info in infos if info.type == wanted)

    def studies(self) -> list[str]:
        return [name for name in self.list_dirs() if is_name(name) and self.is_study(name)]

    def is_study(self, name: str) -> bool:
        return any(self.exists(name, marker) for marker in STUDY_MARKERS)

    def require_study(self, name: str) -> None:
        check_name(name, "study name")
        if not self.is_study(name):
            known = self.studies()
            listing = ", ".join(known) if known else "none"
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise StudyError(f"no study named {name!r} in storage {self.root} (known studies: {listing}){hint}")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
