#!/usr/bin/env python3
"""Raw HTTP/1.1 client for sealrun's secrets proxy over its unix socket.

A second process, so the proxy sees a foreign peer (its own pid) and the
requests are exactly the bytes written here: no client-side path cleaning.
Reads a JSON list of {"raw": "<request bytes>", "read_timeout": s} from stdin
and prints one JSON line per request: {"status": int|null, "body": str,
"error": str|null, "pid": int}. Standard library only.
"""
import json
import os
import socket
import sys


def send(sock_path, raw, timeout):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(sock_path)
        try:
            s.sendall(raw.encode("latin-1"))
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the whole request was read: read the answer

        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                break
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = None
        if head.startswith(b"HTTP/1."):
            status = int(head.split(b" ")[1])
        return {"status": status, "body": body.decode("utf-8", "replace"), "error": None, "pid": os.getpid()}
    except Exception as e:  # the harness asserts on it
        return {"status": None, "body": "", "error": repr(e), "pid": os.getpid()}
    finally:
        s.close()


def main():
    sock_path = sys.argv[1]
    for req in json.load(sys.stdin):
        print(json.dumps(send(sock_path, req["raw"], req.get("read_timeout", 10))), flush=True)


if __name__ == "__main__":
    main()
