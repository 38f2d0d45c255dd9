#!/usr/bin/env python3
"""StudioML peer for sealrun's interop test.

Builds queue messages exactly as the StudioML Python client's
EncryptedPayloadBuilder does (PyCryptodome PKCS1_OAEP with SHA-256, PyNaCl
SecretBox and nacl.signing), and opens payloads the way the StudioML response
catcher does. Uses only Debian's python3-nacl and python3-pycryptodome.

  studioml.py seal --public-key PUB --out DIR [--count N]
      writes DIR/signing.pub (ssh-ed25519 line), DIR/msg-<i>.json and the
      matching clear-text DIR/req-<i>.json; odd messages carry the 2020
      (paramiko) SSH-wire signature encoding, even ones the raw encoding.
  studioml.py open --private-key PEM --passphrase-file F --signing-key LINE_FILE < msg.json
      verifies and decrypts a wire message; prints the request JSON.
  studioml.py open-payload --private-key PEM --passphrase-file F < payload
      decrypts a bare payload string (a response), prints the plaintext.
"""
import argparse
import base64
import json
import os
import struct
import sys
import time

import nacl.secret
import nacl.signing
import nacl.utils
from Cryptodome.Cipher import PKCS1_OAEP
from Cryptodome.Hash import SHA256
from Cryptodome.PublicKey import RSA


def ssh_string(b):
    return struct.pack(">I", len(b)) + b


def read_ssh_string(b, off):
    (n,) = struct.unpack(">I", b[off:off + 4])
    return b[off + 4:off + 4 + n], off + 4 + n


def ssh_ed25519_line(verify_key, comment):
    blob = ssh_string(b"ssh-ed25519") + ssh_string(bytes(verify_key))
    return "ssh-ed25519 " + base64.b64encode(blob).decode() + " " + comment


def fingerprint(verify_key):
    blob = ssh_string(b"ssh-ed25519") + ssh_string(bytes(verify_key))
    digest = SHA256.new(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def hybrid_encrypt(rsa_pub, data):
    # EncryptedPayloadBuilder._encrypt_str_workload
    symmetric_key = nacl.utils.random(nacl.secret.SecretBox.KEY_SIZE)
    box = nacl.secret.SecretBox(symmetric_key)
    encrypted = box.encrypt(data)  # nonce || ciphertext
    cipher = PKCS1_OAEP.new(rsa_pub, hashAlgo=SHA256)
    encrypted_key = cipher.encrypt(symmetric_key)
    return base64.b64encode(encrypted_key).decode() + "," + base64.b64encode(encrypted).decode()


def hybrid_decrypt(rsa_priv, payload):
    ek, data = payload.split(",")
    cipher = PKCS1_OAEP.new(rsa_priv, hashAlgo=SHA256)
    key = cipher.decrypt(base64.b64decode(ek))
    return nacl.secret.SecretBox(key).decrypt(base64.b64decode(data))


def requests(n):
    for i in range(n):
        yield {
            "experiment": {
                "key": "exp-%d" % i,
                "status": "waiting",
                "pythonver": "3.9",
                "time_added": time.time(),
                "resources_needed": {"cpus": 1, "gpus": 0, "ram": "2G", "hdd": "10G", "gpuMem": "0"},
                "note": "unicode \u00e9\u4e2d\U0001f600" if i % 3 == 0 else "x" * (i * 1000),
            },
            "config": {"experimentLifetime": "20m", "database": {"type": "s3"}},
        }


def cmd_seal(args):
    with open(args.public_key, "rb") as f:
        rsa_pub = RSA.import_key(f.read())
    sk = nacl.signing.SigningKey.generate()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "signing.pub"), "w") as f:
        f.write(ssh_ed25519_line(sk.verify_key, "studioml-client") + "\n")
    for i, req in enumerate(requests(args.count)):
        request_json = json.dumps(req)
        payload = hybrid_encrypt(rsa_pub, request_json.encode("utf-8"))
        sig = sk.sign(payload.encode("utf-8")).signature
        if i % 2 == 1:  # paramiko-era SSH wire signature
            sig = ssh_string(b"ssh-ed25519") + ssh_string(sig)
        msg = {"message": {
            "experiment": {"status": req["experiment"]["status"], "pythonver": req["experiment"]["pythonver"]},
            "time_added": req["experiment"]["time_added"],
            "experiment_lifetime": req["config"]["experimentLifetime"],
            "resources_needed": req["experiment"]["resources_needed"],
            "payload": payload,
            "signature": base64.b64encode(sig).decode(),
            "fingerprint": fingerprint(sk.verify_key),
        }}
        with open(os.path.join(args.out, "msg-%d.json" % i), "w") as f:
            f.write(json.dumps(msg))
        with open(os.path.join(args.out, "req-%d.json" % i), "w") as f:
            f.write(request_json)


def load_private(args):
    with open(args.passphrase_file, "rb") as f:
        pw = f.read()
    with open(args.private_key, "rb") as f:
        return RSA.import_key(f.read(), passphrase=pw.rstrip(b"\n"))


def cmd_open(args):
    priv = load_private(args)
    with open(args.signing_key) as f:
        blob = base64.b64decode(f.read().split()[1])
    kind, off = read_ssh_string(blob, 0)
    key, _ = read_ssh_string(blob, off)
    assert kind == b"ssh-ed25519", kind
    msg = json.load(sys.stdin)["message"]
    payload = msg["payload"]
    sig = base64.b64decode(msg["signature"])
    nacl.signing.VerifyKey(key).verify(payload.encode("utf-8"), sig)  # raises on failure
    if msg.get("fingerprint") != fingerprint(nacl.signing.VerifyKey(key)):
        sys.exit("fingerprint mismatch: %s" % msg.get("fingerprint"))
    sys.stdout.buffer.write(hybrid_decrypt(priv, payload))


def cmd_open_payload(args):
    priv = load_private(args)
    sys.stdout.buffer.write(hybrid_decrypt(priv, sys.stdin.read().strip()))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("seal")
    s.add_argument("--public-key", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--count", type=int, default=4)
    o = sub.add_parser("open")
    o.add_argument("--private-key", required=True)
    o.add_argument("--passphrase-file", required=True)
    o.add_argument("--signing-key", required=True)
    op = sub.add_parser("open-payload")
    op.add_argument("--private-key", required=True)
    op.add_argument("--passphrase-file", required=True)
    args = p.parse_args()
    {"seal": cmd_seal, "open": cmd_open, "open-payload": cmd_open_payload}[args.cmd](args)


if __name__ == "__main__":
    main()
