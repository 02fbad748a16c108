"""Fixtures for the reliability tests: an S3-protocol server on loopback (moto's server mode) and a fault-
injecting HTTP proxy in front of it. Nothing leaves 127.0.0.1."""

from __future__ import annotations

import http.client
import logging
import os
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "x",
    "AWS_SECRET_ACCESS_KEY": "x",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never look for instance credentials on the network
}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a moto S3 server, started once for the session and stopped after."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    old = {k: os.environ.get(k) for k in _AWS_ENV}
    os.environ.update(_AWS_ENV)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def storage_options(endpoint: str, **extra) -> dict:
    return {
        "key": "x",
        "secret": "x",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        **extra,
    }


@pytest.fixture
def s3_bucket(s3_endpoint, request) -> Iterator[str]:
    """A fresh, empty bucket per test (name derived from the test); deleted with its objects afterwards."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )
    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    client.create_bucket(Bucket=name)
    yield name
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=obj["Key"])
    client.delete_bucket(Bucket=name)


# ------------------------------------------------------------------ fault-injecting proxy

_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade", "trailer"}


@dataclass
class FaultProxy:
    """Forwards HTTP to `upstream`; GETs of selected object paths first get the queued faults.

    ``faults[path]`` is a list consumed one GET at a time: ``503`` (S3 ``ServiceUnavailable``),
    ``"slowdown"`` (503 ``SlowDown``), ``500`` (``InternalError``), ``"drop"`` (connection closed without
    a response), ``"hang"`` (the request is read, then never answered: the connection stays open).
    ``always[path]`` applies on every GET. A key ``"PUT /bucket/key"`` (any method, then a space) applies
    to requests of that method instead of GETs. ``gets[path]`` counts GETs seen (faulted or not).
    """

    upstream: str
    faults: dict[str, list] = field(default_factory=dict)
    always: dict[str, object] = field(default_factory=dict)
    gets: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""
    closing: threading.Event = field(default_factory=threading.Event)

    def next_fault(self, path: str, method: str = "GET"):
        keys = (path, f"GET {path}") if method == "GET" else (f"{method} {path}",)
        with self.lock:
            if method == "GET":
                self.gets[path] += 1
            for key in keys:
                if key in self.always:
                    return self.always[key]
                queue = self.faults.get(key)
                if queue:
                    return queue.pop(0)
            return None


def _handler(proxy: FaultProxy):
    up = urlsplit(proxy.upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _body(self) -> bytes | None:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                data = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else None

        def _forward(self) -> None:
            body = self._body()
            path = urlsplit(self.path).path
            fault = proxy.next_fault(path, self.command)
            if fault is not None:
                if fault == "hang":  # read, never answered: the client waits on an open connection
                    proxy.closing.wait()
                    self.close_connection = True
                    return
                if fault == "drop":
                    self.close_connection = True
                    return  # no response at all: the client sees the connection die
                if fault in (503, 500, "slowdown"):
                    code = {503: "ServiceUnavailable", 500: "InternalError", "slowdown": "SlowDown"}[fault]
                    xml = (
                        f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                        f"<Message>injected fault</Message></Error>"
                    ).encode()
                    self.send_response(503 if fault != 500 else 500)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    self.wfile.write(xml)
                    return
            conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            if body is not None:
                headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in _HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            length = resp.getheader("Content-Length")
            self.send_header(
                "Content-Length", length if self.command == "HEAD" and length else str(len(data))
            )
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

    return Handler


@pytest.fixture
def fault_proxy(s3_endpoint) -> Iterator[FaultProxy]:
    """A loopback proxy in front of the S3 server that injects 503s and dropped connections."""
    proxy = FaultProxy(s3_endpoint)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(proxy))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    proxy.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield proxy
    finally:
        proxy.closing.set()
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a TCP server that accepts connections and never answers (nor reads)."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()
