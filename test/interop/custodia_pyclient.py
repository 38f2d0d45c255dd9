#!/usr/bin/python3
"""Custodia's own Python client (python3-custodia, CustodiaSimpleClient over
requests and a unix socket) doing what an application does, configured as
CPD-101 configures it: SimpleAuthKeys with id header CUSTODIA_AUTH_ID and key
header CUSTODIA_KEY_ID. Prints one JSON transcript, a line per step: the
result, or the HTTP status of the error. The Go test runs it against real
Custodia 0.6 and against the sealrun proxy and compares the transcripts.

  custodia_pyclient.py SOCKET API_ID API_KEY
"""
import json
import sys
from urllib.parse import quote

import requests
from custodia.client import CustodiaSimpleClient


def main():
    sock, api_id, api_key = sys.argv[1:4]
    client = CustodiaSimpleClient("http+unix://%s/secrets/" % quote(sock, safe=""))
    client.set_simple_auth_keys(api_id, api_key, name_header="CUSTODIA_AUTH_ID", key_header="CUSTODIA_KEY_ID")
    wrong = CustodiaSimpleClient(client.url)
    wrong.set_simple_auth_keys(api_id, "wrong-" + api_key[:4], name_header="CUSTODIA_AUTH_ID", key_header="CUSTODIA_KEY_ID")
    anonymous = CustodiaSimpleClient(client.url)

    steps = [
        ("mkdir app", lambda: client.create_container("app")),
        ("mkdir app again", lambda: client.create_container("app")),
        ("set app/db", lambda: client.set_secret("app/db", "py-secret-\u00e9 \u2713")),
        ("set app/db again", lambda: client.set_secret("app/db", "other")),
        ("get app/db", lambda: client.get_secret("app/db")),
        ("set app/empty", lambda: client.set_secret("app/empty", "")),
        ("mkdir app/sub", lambda: client.create_container("app/sub")),
        ("set app/sub/k", lambda: client.set_secret("app/sub/k", "nested")),
        ("ls app", lambda: sorted(client.list_container("app"))),
        ("ls app/sub", lambda: sorted(client.list_container("app/sub"))),
        ("get app/missing", lambda: client.get_secret("app/missing")),
        ("ls missing", lambda: client.list_container("missing")),
        ("set outside a container", lambda: client.set_secret("top", "x")),
        ("set in a missing container", lambda: client.set_secret("missing/x", "x")),
        ("get with a wrong key", lambda: wrong.get_secret("app/db")),
        ("ls without credential", lambda: anonymous.list_container("app")),
        ("rmdir app (not empty)", lambda: client.delete_container("app")),
        ("del app/db", lambda: client.del_secret("app/db")),
        ("del app/db again", lambda: client.del_secret("app/db")),
        ("get app/db deleted", lambda: client.get_secret("app/db")),
        ("del app/empty", lambda: client.del_secret("app/empty")),
        ("del app/sub/k", lambda: client.del_secret("app/sub/k")),
        ("rmdir app/sub", lambda: client.delete_container("app/sub")),
        ("rmdir app", lambda: client.delete_container("app")),
        ("ls app deleted", lambda: client.list_container("app")),
    ]
    out = []
    for name, step in steps:
        try:
            out.append([name, "ok", step()])
        except requests.exceptions.HTTPError as e:
            out.append([name, "http", e.response.status_code])
    json.dump(out, sys.stdout, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
