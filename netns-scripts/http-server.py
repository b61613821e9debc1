#!/usr/bin/env python3
"""The lab pods' HTTP server: python's http.server for GET (the files of DIR), plus an
upload sink for bulk tests: PUT or POST a body (Content-Length or chunked) and the answer
is "<sha256 of the body> <bytes> <NAME>\n"; nothing is stored.

    http-server.py PORT DIR NAME

Like `python3 -m http.server` it answers HTTP/1.0 (one request per connection), so it sends
no "100 Continue": give curl `-H Expect:` for uploads, or it waits a second before sending.
"""

import functools
import hashlib
import http.server
import sys

CHUNK = 1 << 16


class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, name, **kwargs):
        self.name = name
        super().__init__(*args, **kwargs)

    def _read(self, n):
        """The next n bytes of the body, piece by piece (fewer if the peer stops)."""
        while n:
            piece = self.rfile.read(min(n, CHUNK))
            if not piece:
                return
            n -= len(piece)
            yield piece

    def _body_chunks(self):
        """The request body, piece by piece (do_PUT has checked that its length is said)."""
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            yield from self._read(int(self.headers["Content-Length"]))
            return
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            yield from self._read(size)
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailers

    def do_PUT(self):
        if self.headers.get("Content-Length") is None and "chunked" not in self.headers.get(
            "Transfer-Encoding", ""
        ).lower():
            self.send_error(411, "Length Required")
            return
        h, n = hashlib.sha256(), 0
        for piece in self._body_chunks():
            h.update(piece)
            n += len(piece)
        body = f"{h.hexdigest()} {n} {self.name}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    port, directory, name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    handler = functools.partial(Handler, directory=directory, name=name)
    http.server.ThreadingHTTPServer.allow_reuse_address = True
    with http.server.ThreadingHTTPServer(("0.0.0.0", port), handler) as s:
        print(f"serving {directory} on 0.0.0.0:{port} as {name}", flush=True)
        s.serve_forever()


if __name__ == "__main__":
    main()
