"""OCI image archives built with the standard library, for ``ctr image import``.

An archive is an OCI image layout in a tar file: ``oci-layout``,
``index.json`` naming one manifest (with its platform and the image name
containerd gives it), the manifest, the image config, and uncompressed tar
layers. Nothing in an image is executed to build it, so an arm64 image is
made on an x86_64 host without emulation.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Union

__all__ = ["File", "Layer", "files_layer", "write_archive"]

_LAYER = "application/vnd.oci.image.layer.v1.tar"
_CONFIG = "application/vnd.oci.image.config.v1+json"
_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
#: Fixed times keep layers byte-identical from run to run.
_MTIME = 1_700_000_000


class Layer(NamedTuple):
    """An uncompressed tar layer on disk and its sha256 (digest and diff ID alike)."""

    path: Path
    digest: str
    size: int


class File(NamedTuple):
    """One entry of a layer: a file (``data``), a directory or a symlink (``target``)."""

    path: str
    data: Union[bytes, Path, None] = None
    mode: int = 0o644
    target: str = ""
    directory: bool = False


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _layer(path: Path) -> Layer:
    return Layer(path, _sha256_file(path), path.stat().st_size)


def files_layer(files: Iterable[File], path: Path) -> Layer:
    """A layer of the given entries (parent directories are not implied: list them)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for f in files:
            info = tarfile.TarInfo(f.path.lstrip("/"))
            info.mtime = _MTIME
            info.mode = f.mode
            if f.directory:
                info.type = tarfile.DIRTYPE
                info.mode = f.mode if f.mode != 0o644 else 0o755
                tar.addfile(info)
            elif f.target:
                info.type = tarfile.SYMTYPE
                info.linkname = f.target
                info.mode = 0o777
                tar.addfile(info)
            else:
                data = f.data.read_bytes() if isinstance(f.data, Path) else (f.data or b"")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return _layer(path)


def write_archive(
    path: Path,
    *,
    name: str,
    layers: Sequence[Layer],
    architecture: str,
    config: dict[str, Any],
    variant: str = "",
) -> None:
    """Write the image ``name`` (e.g. ``localhost/busybox:arm64``) as an OCI archive."""
    platform: dict[str, str] = {"architecture": architecture, "os": "linux"}
    if variant:
        platform["variant"] = variant
    image_config = {
        **platform,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
    }
    config_blob = json.dumps(image_config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": _MANIFEST,
        "config": _descriptor(_CONFIG, config_blob),
        "layers": [
            {"mediaType": _LAYER, "digest": layer.digest, "size": layer.size} for layer in layers
        ],
    }
    manifest_blob = json.dumps(manifest, sort_keys=True).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                **_descriptor(_MANIFEST, manifest_blob),
                "platform": platform,
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1],
                },
            }
        ],
    }
    with (
        tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as temp,
        tarfile.open(fileobj=temp, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        _add_bytes(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        _add_bytes(tar, "index.json", json.dumps(index, sort_keys=True).encode())
        for blob in (config_blob, manifest_blob):
            _add_bytes(tar, _blob_path(_digest(blob)), blob)
        for layer in layers:
            info = tar.gettarinfo(os.fspath(layer.path), arcname=_blob_path(layer.digest))
            info.mtime, info.uid, info.gid, info.uname, info.gname = _MTIME, 0, 0, "", ""
            with open(layer.path, "rb") as f:
                tar.addfile(info, f)
    os.replace(temp.name, path)


def _digest(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _descriptor(media_type: str, blob: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": _digest(blob), "size": len(blob)}


def _blob_path(digest: str) -> str:
    return "blobs/" + digest.replace(":", "/")


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), _MTIME
    tar.addfile(info, io.BytesIO(data))
