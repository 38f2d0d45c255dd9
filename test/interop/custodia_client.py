#!/usr/bin/env python3
"""Does what a Custodia client does, with the standard library only:
http.client over an AF_UNIX socket, Custodia's auth headers, the simple
message type. Exits non-zero with a message on the first surprise.

  custodia_client.py SOCKET API_ID API_KEY
"""
import http.client
import json
import socket
import sys


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.path)
        self.sock = s


def main():
    sock, api_id, api_key = sys.argv[1:4]
    headers = {"CUSTODIA_AUTH_ID": api_id, "CUSTODIA_AUTH_KEY": api_key}

    def call(method, path, body=None, content_type=None, expect=200):
        conn = UnixHTTPConnection(sock)
        h = dict(headers)
        if content_type:
            h["Content-Type"] = content_type
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        if resp.status != expect:
            sys.exit("%s %s: got %d, want %d: %s" % (method, path, resp.status, expect, data[:200]))
        return data

    call("POST", "/secrets/pyapp/", expect=201)
    msg = json.dumps({"type": "simple", "value": "py-secret-\u00e9"})
    call("PUT", "/secrets/pyapp/db", msg, "application/json", expect=201)
    call("PUT", "/secrets/pyapp/db", msg, "application/json", expect=409)
    got = json.loads(call("GET", "/secrets/pyapp/db"))
    if got != {"type": "simple", "value": "py-secret-\u00e9"}:
        sys.exit("GET returned %r" % got)
    listing = json.loads(call("GET", "/secrets/pyapp/"))
    if listing != ["db"]:
        sys.exit("list returned %r" % listing)
    call("DELETE", "/secrets/pyapp/db", expect=204)
    call("GET", "/secrets/pyapp/db", expect=404)
    call("DELETE", "/secrets/pyapp/", expect=204)
    headers["CUSTODIA_AUTH_KEY"] = "wrong"
    call("GET", "/secrets/pyapp/", expect=403)
    print("ok")


if __name__ == "__main__":
    main()
