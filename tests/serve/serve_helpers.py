"""HTTP helpers for the serve tests: a plain urllib client, multipart bodies, a uvicorn thread."""

import io
import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass



@dataclass
class Reply:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


class Client:
    """Plain urllib against the server: what any user's HTTP client would send."""

    def __init__(self, base: str):
        self.base = base

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
                headers: dict | None = None) -> Reply:
        h = dict(headers or {})
        if content_type:
            h["Content-Type"] = content_type
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return Reply(r.status, dict(r.headers), r.read())
        except urllib.error.HTTPError as e:
            return Reply(e.code, dict(e.headers), e.read())

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def post_file(self, data: bytes, filename: str = "query.png", part_type: str = "image/png",
                  field: str = "image") -> Reply:
        body, ctype = multipart(data, filename, part_type, field)
        return self.request("POST", "/predict", body, ctype)


def multipart(data: bytes, filename: str, part_type: str, field: str = "image") -> tuple[bytes, str]:
    boundary = "ravis-test-boundary-7f3a"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {part_type}\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def start_server(app):
    """(server, base URL): uvicorn on 127.0.0.1, port chosen by the OS."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"
