"""Folders in the lake (models, run reports) on a local disk or an object store.

Tables go through deltalake; a folder of files (weights, tokenizer, card, report) goes through
pyarrow's filesystems, which reach the same stores with the same credentials. On a local lake
a folder is just its path. On an object store every node reads a folder through its own cache
($GERMLINE_CACHE, else ~/.cache/germline): a model is downloaded once per node and fetched
again only when the stored folder's record (written last by every upload) changed. That is
what lets a model made on one node load on any other, with nothing shared but the store.

Two rules keep stored folders whole and portable:
- Upload order: a folder's marker files (config.json, adapter_config.json, germline.json, the
  files a reader takes as "a model is here") go last, so a folder that has them is complete.
- An adapter names its base by the base's lake URI in the store, and by the base's cached
  path in a node's copy; the swap happens on upload and on download.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from germline.core.errors import InputError
from germline.storage.lake import Lake

log = logging.getLogger(__name__)

CACHE_ENV = "GERMLINE_CACHE"
# What germline knows about a model, written into its folder last of all: present means whole.
MODEL_META = "germline.json"
MARKERS = ("config.json", "adapter_config.json", MODEL_META)
ADAPTER_CONFIG = "adapter_config.json"
BASE_KEY = "base_model_name_or_path"
# Subfolders of a stored model that are not the model: Ray Train's checkpoints of a student.
CHECKPOINTS = "checkpoints"
NOT_THE_MODEL = (CHECKPOINTS,)
# Written last by every upload: its files and a fresh id (see LakeFolders.version).
FOLDER_RECORD = ".germline-folder.json"

# deltalake's (object_store's) option names, lower-cased, for what pyarrow's S3 client takes.
_S3_KEYS = {
    "access_key": ("aws_access_key_id", "access_key_id"),
    "secret_key": ("aws_secret_access_key", "secret_access_key"),
    "session_token": ("aws_session_token", "session_token", "aws_token", "token"),
    "region": ("aws_region", "region", "aws_default_region"),
    "endpoint_override": ("aws_endpoint_url", "aws_endpoint", "endpoint_url", "endpoint"),
}


def cache_root() -> Path:
    """This node's cache of remote lake folders."""
    raw = os.environ.get(CACHE_ENV)
    root = Path(raw).expanduser() if raw else Path.home() / ".cache" / "germline"
    return (root / "lakes").resolve()


def filesystem(uri: str, storage_options: dict[str, str]):
    """(pyarrow filesystem, path inside it) for a lake URI, built from the lake's storage
    options (the same keys deltalake takes); stores without options use the node's default
    credentials (instance role, environment)."""
    import pyarrow.fs as pafs

    parsed = urlparse(uri)
    path = f"{parsed.netloc}{parsed.path}".rstrip("/")
    if parsed.scheme in ("s3", "s3a"):
        opts = {k.lower(): v for k, v in storage_options.items()}
        kwargs: dict[str, str] = {}
        for arg, names in _S3_KEYS.items():
            value = next((opts[n] for n in names if n in opts), None)
            if value:
                kwargs[arg] = value
        endpoint = kwargs.get("endpoint_override")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if "region" not in kwargs and region:  # what deltalake would read too
            kwargs["region"] = region
        elif "region" not in kwargs and not endpoint:  # AWS itself: ask where the bucket is
            with suppress(OSError):
                kwargs["region"] = pafs.resolve_s3_region(parsed.netloc)
        if endpoint and "://" in endpoint:
            scheme, _, rest = endpoint.partition("://")
            kwargs["endpoint_override"], kwargs["scheme"] = rest.rstrip("/"), scheme
        elif opts.get("aws_allow_http", opts.get("allow_http", "")).lower() == "true":
            kwargs["scheme"] = "http"
        return pafs.S3FileSystem(**kwargs), path
    try:
        fs, inner = pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError/ImportError by store
        raise InputError(
            f"cannot reach {uri} for model and report folders ({exc}); s3:// takes the lake's "
            "storage options, other stores the node's default credentials"
        ) from None
    return fs, inner.rstrip("/")


def _remote(uri: str) -> bool:
    """A URI of an object store, not a path (a lake's models can be either: a model
    registered from a local folder keeps its path)."""
    return "://" in uri


class LakeFolders:
    """Reads and writes folders of a lake: paths on a local lake, cached copies on a remote
    one. Cheap to build; build one where it is used (each node has its own cache)."""

    def __init__(self, lake: Lake, cache: Path | None = None) -> None:
        self.lake = lake
        self.cache = (cache or cache_root()).resolve()
        self._fs = None

    @property
    def remote(self) -> bool:
        """Whether this lake keeps its folders on an object store."""
        return not self.lake.is_local

    def _filesystem(self):
        if self._fs is None:
            self._fs = filesystem(self.lake.root, self.lake.storage_options)
        return self._fs

    def filesystem_path(self, uri: str) -> tuple[Any, str]:
        """The pyarrow filesystem and the path in it of `uri`, which must lie in this lake
        (for what takes a filesystem itself, such as Ray Train's run storage)."""
        fs, root = self._filesystem()
        if uri != self.lake.root and not uri.startswith(self.lake.root + "/"):
            raise InputError(f"{uri} is not in the lake {self.lake.root}")
        return fs, root + uri[len(self.lake.root) :]

    # Where a remote folder lies in this node's cache, and back.
    def cached(self, uri: str) -> Path:
        parsed = urlparse(uri)
        return self.cache / parsed.scheme / parsed.netloc / parsed.path.strip("/")

    def uri_of(self, path: str | Path) -> str | None:
        """The lake URI of a cached copy (None for any other path)."""
        try:
            rel = Path(path).resolve().relative_to(self.cache)
        except ValueError:
            return None
        scheme, bucket, *rest = rel.parts
        return f"{scheme}://{bucket}/" + "/".join(rest)

    # Reading.
    def listing(self, uri: str) -> dict[str, list]:
        """{relative path: [size, mtime]} of the files in a stored folder (the model's own
        files: checkpoint subfolders are not listed); empty when there is no such folder."""
        import pyarrow.fs as pafs

        fs, path = self.filesystem_path(uri)
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
        out = {}
        for info in infos:
            rel = info.path[len(path) + 1 :]
            if (
                info.type == pafs.FileType.File
                and rel.split("/")[0] not in NOT_THE_MODEL
                and rel != FOLDER_RECORD
            ):
                out[rel] = [info.size, info.mtime_ns]
        return out

    def exists(self, uri: str) -> bool:
        """Whether a file (or folder) exists."""
        if not _remote(uri):
            return Path(uri).exists()
        import pyarrow.fs as pafs

        fs, path = self.filesystem_path(uri)
        return fs.get_file_info(path).type != pafs.FileType.NotFound

    def read_text(self, uri: str) -> str | None:
        """A small file's text (a config, a card), straight from the store; None if absent."""
        if not _remote(uri):
            file = Path(uri)
            return file.read_text() if file.is_file() else None
        fs, path = self.filesystem_path(uri)
        try:
            with fs.open_input_stream(path) as stream:
                return stream.read().decode()
        except FileNotFoundError:
            return None

    def fetch(self, uri: str) -> Path:
        """A local folder holding `uri`: the path itself on a local lake; on a remote one, this
        node's cached copy, downloaded first if the stored folder's record changed since."""
        if not _remote(uri):
            return Path(uri)
        local = self.cached(uri)
        manifest = self._manifest(local)
        with self._lock(local):
            version = self.version(uri)
            if version is None:
                raise InputError(f"{uri} holds no files (not in the lake, or still uploading)")
            if local.is_dir() and manifest.exists() and json.loads(manifest.read_text()) == version:
                return local
            files = sorted(version["files"])
            log.info("downloading %s (%d files) to %s", uri, len(files), local)
            tmp = _fresh_dir(local)
            try:
                self._download(uri, files, tmp)
                self._localize_base(tmp)
                if local.exists():
                    shutil.rmtree(local)
                os.replace(tmp, local)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            manifest.write_text(json.dumps(version))
        return local

    def version(self, uri: str) -> dict[str, Any] | None:
        """What names the stored folder's current content: the record `put` writes last (a
        fresh id per upload, so a same-size rewrite within a second is still seen: S3's
        modification times are whole seconds), else the listing of a folder put there by
        other means; None when there is no such folder."""
        text = self.read_text(f"{uri}/{FOLDER_RECORD}")
        if text is not None:
            return json.loads(text)
        listing = self.listing(uri)
        return {"files": listing} if listing else None

    def _download(self, uri: str, files: list[str], into: Path) -> None:
        fs, path = self.filesystem_path(uri)

        def one(rel: str) -> None:
            target = into / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(f"{path}/{rel}") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 8 << 20)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, files))

    def _localize_base(self, folder: Path) -> None:
        """Point a downloaded adapter at this node's copy of its base."""
        config_file = folder / ADAPTER_CONFIG
        if not config_file.exists():
            return
        config = json.loads(config_file.read_text())
        base = str(config.get(BASE_KEY) or "")
        if base.startswith(self.lake.root + "/"):
            config[BASE_KEY] = str(self.fetch(base))
            config_file.write_text(json.dumps(config, indent=2))

    # Writing.
    def put(self, folder: Path, uri: str, last: tuple[str, ...] = MARKERS) -> dict[str, Any]:
        """Upload a local folder's files to `uri` (a remote lake only): the files named in
        `last` after the others, then the folder's record (see `version`), which it returns.
        An adapter's base, when it is a cached copy, is named by its lake URI."""
        fs, path = self.filesystem_path(uri)
        with suppress(FileNotFoundError):  # readers must not trust the old record meanwhile
            fs.delete_file(f"{path}/{FOLDER_RECORD}")
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != FOLDER_RECORD)
        first = [p for p in files if p.name not in last]
        final = sorted(
            (p for p in files if p.name in last), key=lambda p: _upload_rank(p.name, last)
        )

        def one(file: Path) -> None:
            target = f"{path}/{file.relative_to(folder).as_posix()}"
            with fs.open_output_stream(target) as out:
                if file.name == ADAPTER_CONFIG and file.parent == folder:
                    out.write(self._portable_base(file.read_bytes()))
                    return
                with open(file, "rb") as src:
                    shutil.copyfileobj(src, out, 8 << 20)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, first))
        for file in final:
            one(file)
        record = {
            "id": uuid.uuid4().hex,
            "files": {p.relative_to(folder).as_posix(): p.stat().st_size for p in files},
        }
        with fs.open_output_stream(f"{path}/{FOLDER_RECORD}") as out:
            out.write(json.dumps(record).encode())
        return record

    def _portable_base(self, data: bytes) -> bytes:
        config = json.loads(data)
        base = self.uri_of(config.get(BASE_KEY) or "")
        if base is None:
            return data
        config[BASE_KEY] = base
        return json.dumps(config, indent=2).encode()

    def save(self, uri: str, write: Callable[[Path], None], beside: tuple[str, ...] = ()) -> Path:
        """Make the folder `uri` with `write(tmp)`; return its local path. A local lake gets it
        by one rename, so an interrupted build leaves nothing; a remote one by an upload with
        the markers last, after which this node's cache already holds the copy.

        `beside` names entries the folder may already hold that are not the model (a student's
        Ray Train checkpoints): they are kept, and on a local lake the new files move in one by
        one with the markers last, so the folder reads as a model only once it is whole. Any
        other entry already there is refused, never overwritten."""
        local = Path(uri) if not self.remote else self.cached(uri)
        if not self.remote and local.is_dir():
            others = sorted(p.name for p in local.iterdir() if p.name not in beside)
            if others:
                raise InputError(f"{uri} exists and holds other files; move it away first")
        with self._staging(local) as tmp:
            write(tmp)
            if not self.remote:
                if not local.exists():
                    os.replace(tmp, local)
                    return local
                for item in sorted(tmp.iterdir(), key=lambda p: _upload_rank(p.name, MARKERS)):
                    os.replace(item, local / item.name)
                return local
            record = self.put(tmp, uri)
            with self._lock(local):  # this node's copy is current: say so, and fetch keeps it
                if local.exists():
                    shutil.rmtree(local)
                os.replace(tmp, local)
                self._manifest(local).write_text(json.dumps(record))
        return local

    @staticmethod
    def _manifest(local: Path) -> Path:
        return local.parent / f".{local.name}.manifest.json"

    @staticmethod
    def _lock(local: Path):
        """One writer at a time of a cached copy, across this node's processes."""
        from filelock import FileLock

        local.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(local.parent / f".{local.name}.lock"))

    @contextmanager
    def _staging(self, local: Path) -> Iterator[Path]:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = _fresh_dir(local)
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def names(self, uri: str) -> list[str]:
        """The entries directly under a folder (none when it does not exist)."""
        if not _remote(uri):
            folder = Path(uri)
            return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        import pyarrow.fs as pafs

        fs, path = self.filesystem_path(uri)
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        return sorted(i.path.rsplit("/", 1)[-1] for i in infos)


def _fresh_dir(local: Path) -> Path:
    """A new, empty hidden folder beside `local`, to build it in and rename into place.

    Made with the process's umask (`tempfile.mkdtemp` makes 0700 folders, and the rename
    would carry that into the lake: a model no one else on a shared lake could read)."""
    while True:
        tmp = local.parent / f".{local.name}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


def _upload_rank(name: str, last: tuple[str, ...]) -> tuple[bool, bool]:
    """Sort key of a folder's files: the others first, then the markers, germline's own
    metadata (the mark of a whole model) at the very end."""
    return name in last, name == MODEL_META
