"""WebDataset tar shards: ``{key}.{ext}``, ``{key}.json`` and, when labelled, ``{key}.cls``.

Members are laid out exactly as webdataset's `TarWriter` does (one member per component, sorted by
extension), with fixed mtime/owner/mode so reruns produce byte-identical tars. It is written with the
standard library's `tarfile` because importing `webdataset` imports torch (~2 s and ~250 MB per
worker process) just to write a tar; reading our shards back with `webdataset` is tested.
"""

from __future__ import annotations

import io
import tarfile

from resize_pipeline import jsontext
from resize_pipeline.sinks.base import FormatWriter, HashingFile, Sample


class WebDatasetWriter(FormatWriter):
    ext = "tar"

    def __init__(self, fileobj: HashingFile, **options) -> None:
        super().__init__(fileobj)
        self.tar = tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT)  # type: ignore[call-overload]

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o444
        info.uname = info.gname = "resize"
        self.tar.addfile(info, io.BytesIO(data))

    def write(self, sample: Sample) -> None:
        parts = {
            sample.ext: sample.payload,
            "json": jsontext.dumps(sample.info(), sort_keys=True).encode("utf-8"),
        }
        if sample.label >= 0:
            parts["cls"] = str(sample.label).encode()
        for ext in sorted(parts):
            self._add(f"{sample.key}.{ext}", parts[ext])

    def close(self) -> None:
        self.tar.close()
