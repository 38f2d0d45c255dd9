#!/usr/bin/env python3
"""Open records with Custodia's own reader: custodia.store.encgen.EncryptedOverlay
(jwcrypto underneath), configured as a Custodia 0.6 server configures it
(A256CBC-HS512, secret_protection = pinning), over an in-memory backing store.

Usage: custodia_overlay.py MASTER_KEY_FILE < records.json
records.json is a JSON list of {"key": "keys/<container>/<name>", "value": "<compact JWE>"}.
Prints a JSON list of {"key", "ok", "value" | "error"}; never a key.
"""
import configparser
import json
import sys

from custodia.store.encgen import EncryptedOverlay


class Records:
    """The backing store: what EncryptedOverlay.get reads from."""

    def __init__(self, records):
        self.records = records

    def get(self, key):
        return self.records.get(key)


def main():
    cfg = configparser.ConfigParser(interpolation=configparser.ExtendedInterpolation())
    cfg.read_dict({
        "global": {},
        "store:enc": {
            "handler": "EncryptedOverlay",
            "backing_store": "plain",
            "master_key": sys.argv[1],
            "master_enctype": "A256CBC-HS512",
            "secret_protection": "pinning",
        },
    })
    overlay = EncryptedOverlay(cfg, "store:enc")
    todo = json.load(sys.stdin)
    overlay.store = Records({r["key"]: r["value"] for r in todo})
    out = []
    for r in todo:
        try:
            out.append({"key": r["key"], "ok": True, "value": overlay.get(r["key"])})
        except Exception as err:  # pylint: disable=broad-except
            out.append({"key": r["key"], "ok": False, "error": type(err).__name__ + ": " + str(err)})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
