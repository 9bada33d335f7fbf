#!/usr/bin/env python3
"""Writes N mail-shaped files into OUT, deterministically from SEED.

Shape (see BENCHMARKS.md): ~98.5% plain-text messages of 2-20 KB (log-uniform), ~1.5% with a
base64 attachment of 100 KB - 5 MB (random bytes, like already-compressed files), ~2% exact
duplicates of an earlier message (forwarded copies, multi-recipient deliveries).
usage: make-mail.py OUT N SEED
"""
import base64
import math
import os
import random
import sys

WORDS = ("the of and to a in is you that it he was for on are as with his they I at be this "
         "have from or one had by word but not what all were we when your can said there use an "
         "each which she do how their if will up other about out many then them these so some "
         "her would make like him into time has look two more write go see number no way could "
         "people my than first water been call who oil its now find long down day did get come "
         "made may part meeting invoice attached please regards tomorrow project review budget "
         "quarterly report deadline server mailbox backup schedule customer order shipping "
         "account password reset thanks hello team update release notes agenda minutes").split()


def headers(rng, i, subject):
    day = 1 + rng.randrange(28)
    return (f"Return-Path: <user{rng.randrange(500)}@example.org>\r\n"
            f"Received: from mx{rng.randrange(4)}.example.org (mx.example.org [192.0.2.{rng.randrange(250)}])\r\n"
            f"\tby imap1.example.com (Cyrus 3.6.1) with LMTPA;\r\n"
            f"\tMon, {day:02d} Nov 2026 {rng.randrange(24):02d}:{rng.randrange(60):02d}:00 +0000\r\n"
            f"From: Sender {rng.randrange(500)} <user{rng.randrange(500)}@example.org>\r\n"
            f"To: recipient@example.com\r\n"
            f"Subject: {subject}\r\n"
            f"Date: Mon, {day:02d} Nov 2026 {rng.randrange(24):02d}:{rng.randrange(60):02d}:00 +0000\r\n"
            f"Message-ID: <{i}.{rng.getrandbits(48):x}@example.org>\r\n"
            f"MIME-Version: 1.0\r\n")


def text(rng, size):
    out, n = [], 0
    while n < size:
        line = " ".join(rng.choices(WORDS, k=rng.randrange(6, 14)))
        out.append(line)
        n += len(line) + 2
    return "\r\n".join(out)[:size]


def message(rng, i):
    subject = " ".join(rng.choices(WORDS, k=5))
    body_size = int(math.exp(rng.uniform(math.log(2000), math.log(20000))))
    h = headers(rng, i, subject)
    if rng.random() < 0.015:
        att = rng.randbytes(int(math.exp(rng.uniform(math.log(75000), math.log(3750000)))))
        return (h + 'Content-Type: multipart/mixed; boundary="=_b"\r\n\r\n--=_b\r\n'
                "Content-Type: text/plain; charset=utf-8\r\n\r\n" + text(rng, body_size // 4) +
                "\r\n--=_b\r\nContent-Type: application/octet-stream; name=\"a.bin\"\r\n"
                "Content-Transfer-Encoding: base64\r\n\r\n" +
                base64.encodebytes(att).decode().replace("\n", "\r\n") + "--=_b--\r\n").encode()
    return (h + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + text(rng, body_size)).encode()


def main():
    out, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    written = []
    for i in range(n):
        d = os.path.join(out, f"{i // 1000:03d}")
        if i % 1000 == 0:
            os.makedirs(d, exist_ok=True)
        if written and rng.random() < 0.02:
            data = open(rng.choice(written), "rb").read()
        else:
            data = message(rng, i)
        path = os.path.join(d, f"{i}.")
        with open(path, "wb") as f:
            f.write(data)
        if len(written) < 2000:
            written.append(path)


if __name__ == "__main__":
    main()
