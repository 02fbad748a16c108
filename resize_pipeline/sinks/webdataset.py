"""WebDataset tar shards: ``{key}.{ext}``, ``{key}.json`` and, when labelled, ``{key}.cls``.

Written with webdataset's own `TarWriter`, with fixed mtime/owner/mode so that reruns produce
byte-identical tars.
"""

from __future__ import annotations

import json

from resize_pipeline.sinks.base import FormatWriter, HashingFile, Sample


class WebDatasetWriter(FormatWriter):
    ext = "tar"

    def __init__(self, fileobj: HashingFile, **options) -> None:
        import webdataset as wds

        super().__init__(fileobj)
        self.tar = wds.TarWriter(fileobj, user="resize", group="resize", mode=0o444, encoder=False, mtime=0.0)

    def write(self, sample: Sample) -> None:
        obj = {
            "__key__": sample.key,
            sample.ext: sample.payload,
            "json": json.dumps(sample.info(), sort_keys=True, ensure_ascii=False).encode("utf-8"),
        }
        if sample.label >= 0:
            obj["cls"] = str(sample.label).encode()
        self.tar.write(obj)

    def close(self) -> None:
        self.tar.close()
