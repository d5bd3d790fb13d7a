"""Storage: where a run's checkpoints and final model live, reachable from every node.

``storage`` (config; null: ``output_dir``) is a folder path (on a multi-node cluster, one that every
node mounts at the same path: NFS, EFS, Filestore) or the URI of a bucket prefix that fsspec reaches:
``s3://BUCKET/PREFIX`` (package ``s3fs``), ``gs://BUCKET/PREFIX`` (``gcsfs``), ``abfs://...``
(``adlfs``). A location is handled as a ``Path`` when it is a folder path and as a ``str`` URI
otherwise; the functions here take either.

Who writes what, so that no process renames, hashes or reads a file another node wrote to its own disk:

* A trainer rank saves into a node-local scratch folder (``$TETHER_SCRATCH``, set per node; default
  ``<tmp>/tether-scratch``), hashes its own files there and copies them to storage, then writes
  their manifest (``manifest_rank<R>.json``: size and SHA-256 of each file) beside them
  (:func:`publish_rank`).
* The driver writes only small files it made itself (``state.json``, ``run.json``) and, last, a
  checkpoint's ``COMPLETE`` marker listing the ranks' manifests. A folder without it is absent.
* To load, a rank copies the files into its scratch folder and checks each one's size and SHA-256
  against the marker there (:func:`fetch_verified`) before anything reads it.
* ``final/``: rank 0 saves it to scratch; into a folder path it is copied to ``.final.tmp`` beside
  ``final`` and renamed (one file system, by the node that wrote it); into a bucket it is uploaded and
  ``final/COMPLETE`` is written last (:func:`publish_folder`).

Credentials are never part of the config: each node's environment gives them (``AWS_ACCESS_KEY_ID``
/ ``AWS_SECRET_ACCESS_KEY``, an instance role, ``GOOGLE_APPLICATION_CREDENTIALS``);
``AWS_ENDPOINT_URL`` points ``s3://`` at another S3-compatible service (MinIO, Ceph, a test server).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from orchestrator import atomic
from orchestrator.errors import CheckpointError, ConfigError

MARKER = "COMPLETE"  # written last: a checkpoint (or a bucket's final/) without it is absent
SCRATCH_ENV = "TETHER_SCRATCH"
LOCAL = ("file", "local")
PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "abfs": "adlfs", "abfss": "adlfs", "az": "adlfs"}


def protocol(value) -> str:
    """``s3`` for ``s3://b/p``; ``file`` for a folder path."""
    text = str(value)
    return text.split("://", 1)[0].lower() if "://" in text else "file"


def check(value: str, field: str) -> None:
    """ConfigError in one line when ``value`` names no storage this run can write to."""
    scheme = protocol(value)
    if scheme in LOCAL:
        return
    if scheme not in PACKAGES:
        raise ConfigError(f"{field}={value!r}: unknown storage scheme '{scheme}://'; use a folder path (on a cluster, "
                          "one every node mounts), s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or abfs://CONTAINER/PREFIX")
    if not value.split("://", 1)[1].strip("/"):
        raise ConfigError(f"{field}={value!r}: name a bucket and a prefix ({scheme}://BUCKET/PREFIX)")
    package = PACKAGES[scheme]
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"{field}={value!r}: {scheme}:// storage needs the '{package}' package: pip install {package}")


def resolve(value: str):
    """A config value -> a location: an absolute ``Path`` for a folder path, else the URI (no trailing /)."""
    if protocol(value) in LOCAL:
        text = str(value).split("://", 1)[1] if "://" in str(value) else str(value)
        return Path(text).expanduser().resolve()
    return str(value).rstrip("/")


def child(base, *names: str):
    """``base/names...`` as the same kind of location."""
    if isinstance(base, Path):
        return base.joinpath(*names)
    return "/".join([str(base).rstrip("/"), *names])


def parent(loc):
    return loc.parent if isinstance(loc, Path) else str(loc).rsplit("/", 1)[0]


def name(loc) -> str:
    return loc.name if isinstance(loc, Path) else str(loc).rstrip("/").rsplit("/", 1)[-1]


def is_local(loc) -> bool:
    return isinstance(loc, Path) or protocol(loc) in LOCAL


def location(value):
    """A location given as a string (a rank's argument): a ``Path`` for a folder path."""
    return resolve(value) if isinstance(value, str) else value


def _fs(loc):
    """``(filesystem, path)``; the listing cache is dropped: other processes write here too."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(str(loc))
    fs.invalidate_cache()
    return fs, path


# ---- small reads and writes ----------------------------------------------------------------------
def exists(loc) -> bool:
    if is_local(loc):
        return Path(location(loc)).exists()
    fs, path = _fs(loc)
    return fs.exists(path)


def is_file(loc) -> bool:
    if is_local(loc):
        return Path(location(loc)).is_file()
    fs, path = _fs(loc)
    return fs.isfile(path)


def is_dir(loc) -> bool:
    if is_local(loc):
        return Path(location(loc)).is_dir()
    fs, path = _fs(loc)
    return fs.isdir(path)


def list_names(loc) -> list[str]:
    """Names directly under ``loc`` (files and folders); empty when there is nothing."""
    if is_local(loc):
        folder = Path(location(loc))
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    fs, path = _fs(loc)
    try:
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    except FileNotFoundError:
        return []


def read_bytes(loc) -> bytes:
    if is_local(loc):
        return Path(location(loc)).read_bytes()
    fs, path = _fs(loc)
    return fs.cat_file(path)


def read_text(loc) -> str:
    return read_bytes(loc).decode("utf-8")


def write_text(loc, text: str) -> None:
    """Write a small file whole: a reader sees the old content, the new one, or (object stores) none."""
    if is_local(loc):
        path = Path(location(loc))
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, text)
        return
    fs, path = _fs(loc)
    fs.pipe_file(path, text.encode("utf-8"))


def sizes(loc) -> dict[str, int]:
    """``{relative path: size}`` of every file under ``loc`` (one listing; no file is read)."""
    if is_local(loc):
        folder = Path(location(loc))
        return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    fs, path = _fs(loc)
    found = fs.find(path, detail=True)
    base = path.rstrip("/") + "/"
    return {k[len(base):]: int(v["size"]) for k, v in found.items() if k.startswith(base) and v["type"] == "file"}


def remove(loc) -> None:
    """Remove a folder (its marker first, so it is never seen half-removed as complete) or a file."""
    if is_local(loc):
        path = Path(location(loc))
        if (path / MARKER).is_file():
            (path / MARKER).unlink()
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        return
    fs, path = _fs(loc)
    if fs.isfile(f"{path}/{MARKER}"):
        fs.rm_file(f"{path}/{MARKER}")
    if fs.exists(path):
        fs.rm(path, recursive=True)


def move(src, dst) -> None:
    """Move a folder within storage: a rename on a file system; on an object store a copy whose marker
    is written last, then the source removed (marker first): never two complete copies half-made."""
    if is_local(src):
        Path(location(dst)).parent.mkdir(parents=True, exist_ok=True)
        os.rename(location(src), location(dst))
        return
    fs, path = _fs(src)
    _, target = _fs(dst)
    files = sorted(sizes(src), key=lambda rel: rel == MARKER)  # the marker last
    for rel in files:
        fs.copy(f"{path}/{rel}", f"{target}/{rel}")
    remove(src)


# ---- files of a node's own disk -> storage and back ------------------------------------------------
def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest(folder: Path, skip=(MARKER,)) -> dict:
    """``{relative path: [size, sha256]}`` of every file under a local ``folder``."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): [p.stat().st_size, sha256(p)]
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in skip}


def scratch_root() -> Path:
    """This node's scratch folder (``$TETHER_SCRATCH``, else ``<tmp>/tether-scratch``)."""
    return Path(os.environ.get(SCRATCH_ENV) or Path(tempfile.gettempdir()) / "tether-scratch")


@contextmanager
def scratch(prefix: str):
    """A fresh folder on this node's disk, removed afterwards."""
    root = scratch_root()
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=root))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def upload(local: Path, dst, files) -> None:
    """Copy ``files`` (relative paths) from the local folder ``local`` to ``dst``."""
    if is_local(dst):
        target = Path(location(dst))
        for rel in files:
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(local) / rel, target / rel)
        return
    fs, path = _fs(dst)
    for rel in files:
        fs.put_file(str(Path(local) / rel), f"{path}/{rel}")


def publish_rank(local: Path, dst, rank: int) -> dict:
    """A rank's files in ``local`` -> ``dst``, then their manifest ``manifest_rank<rank>.json``."""
    files = manifest(local)
    upload(local, dst, sorted(files))
    write_text(child(location(dst), f"manifest_rank{rank}.json"), json.dumps(files, indent=1))
    return files


def rank_manifests(loc) -> dict:
    """The ranks' manifests of a group folder, merged; two ranks that wrote one path differently: error."""
    merged: dict = {}
    for entry in list_names(loc):
        if entry.startswith("manifest_rank") and entry.endswith(".json"):
            for rel, value in json.loads(read_text(child(loc, entry))).items():
                if merged.setdefault(rel, value) != value:
                    raise CheckpointError(f"{child(loc, rel)}: written differently by two ranks")
    return merged


def fetch_verified(src, local: Path, expected: dict) -> None:
    """Copy the files ``expected`` lists (``{rel: [size, sha256]}``) from ``src`` into ``local`` and check
    each one's size and SHA-256 there; CheckpointError naming the stored file otherwise."""
    src = location(src)
    fs, path = (None, None) if is_local(src) else _fs(src)
    for rel, (size, digest) in sorted(expected.items()):
        target = Path(local) / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            if fs is None:
                shutil.copyfile(Path(src) / rel, target)
            else:
                fs.get_file(f"{path}/{rel}", str(target))
        except FileNotFoundError:
            raise CheckpointError(f"{child(src, rel)}: missing file (listed in the checkpoint's manifest)") from None
        if target.stat().st_size != size or sha256(target) != digest:
            raise CheckpointError(f"{child(src, rel)}: does not match what was written (corrupt: size or SHA-256 differs)")


def publish_folder(local: Path, dst) -> None:
    """Publish a whole folder (``final/``) so a reader sees all of it or none: on a file system copy
    it to ``.<name>.tmp`` beside ``dst`` and rename; on an object store upload it, marker last."""
    dst = location(dst)
    files = manifest(local)
    if is_local(dst):
        tmp = Path(dst).parent / f".{Path(dst).name}.tmp"
        remove(tmp)
        upload(local, tmp, sorted(files))
        remove(dst)
        os.rename(tmp, dst)
        return
    remove(dst)
    upload(local, dst, sorted(files))
    write_text(child(dst, MARKER), json.dumps({"files": files}, indent=1))


def folder_published(loc) -> bool:
    """Whether a folder written by :func:`publish_folder` is there whole."""
    return is_dir(loc) if is_local(loc) else is_file(child(loc, MARKER))
