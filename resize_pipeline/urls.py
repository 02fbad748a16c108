"""URL and filesystem helpers shared by sources, sinks and engines (one place for protocol sniffing)."""

from __future__ import annotations

import os
from typing import Any

LOCAL_PROTOCOLS = ("file", "local")
#: filesystems whose files live in one process: worker processes and Ray actors cannot see them
IN_PROCESS_PROTOCOLS = ("memory",)


def protocol(url: str) -> str:
    """``s3://b/k`` -> ``s3``; a plain path -> ``file``."""
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def is_local_url(url: str) -> bool:
    return protocol(url) in LOCAL_PROTOCOLS


def is_remote_url(url: str) -> bool:
    """Anything whose reads wait on a network (s3, gs, http...): not a local disk or memory://."""
    return protocol(url) not in LOCAL_PROTOCOLS + IN_PROCESS_PROTOCOLS


def is_in_process_url(url: str) -> bool:
    return protocol(url) in IN_PROCESS_PROTOCOLS


def normalise(url: str) -> str:
    """Plain paths become absolute; URLs are left alone."""
    return url if "://" in url else os.path.abspath(url)


def fs_protocol(fs: Any) -> str:
    p = fs.protocol
    return p if isinstance(p, str) else p[0]


def is_local_fs(fs: Any) -> bool:
    return fs_protocol(fs) in LOCAL_PROTOCOLS


def writes_visibly(fs: Any) -> bool:
    """Filesystems where a file shows under its name while it is written (a local disk; memory://,
    which stores a file when it is opened): write there under a temp name and rename."""
    return fs_protocol(fs) in LOCAL_PROTOCOLS + IN_PROCESS_PROTOCOLS


def url_to_fs(url: str, storage_options: dict[str, Any] | None = None):
    """`fsspec.core.url_to_fs` with our storage options: (filesystem, path without protocol)."""
    from fsspec.core import url_to_fs as _url_to_fs

    return _url_to_fs(url, **(storage_options or {}))


#: S3 protocols whose per-request timeouts and retries `store_options` sets (s3fs over botocore)
S3_PROTOCOLS = ("s3", "s3a")


def store_options(storage_options: dict[str, Any], urls: list[str], io_timeout: float | None) -> dict[str, Any]:
    """`storage_options` with per-request timeouts for S3, unless the user set their own.

    botocore's connect and read timeouts become `io_timeout` and its retries "standard" mode with 3
    attempts (5xx, throttling such as ``SlowDown``, timeouts, dropped connections); s3fs retries each
    call 5 times on top, so a listing request that never gets an answer is given up after about
    15 x `io_timeout` (the defaults multiply to tens of minutes; DEST's calls have their own, shorter
    deadline: `sinks.dest`). Only when every remote URL of the job is S3 (the same options go to every
    filesystem of the job)."""
    remote = {protocol(u) for u in urls} - set(LOCAL_PROTOCOLS + IN_PROCESS_PROTOCOLS)
    out = dict(storage_options)
    if io_timeout is None or not remote or not remote <= set(S3_PROTOCOLS):
        return out
    config = dict(out.get("config_kwargs") or {})
    config.setdefault("connect_timeout", io_timeout)
    config.setdefault("read_timeout", io_timeout)
    config.setdefault("retries", {"mode": "standard", "max_attempts": 3})
    out["config_kwargs"] = config
    return out
