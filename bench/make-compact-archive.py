#!/usr/bin/env python3
"""Builds an archive for the compaction benchmark with `mailpack put`, from the messages of
make-mail.py in MAIL: ten runs of messages, each followed by a run storing a new version of one
mailbox's cyrus.index (minor version 17, CRCs valid) that references the messages kept so far.

  live: every version references every message so far: only old index versions are dead.
  half: the last version references only the second half of the batches: about half the bytes
        are messages no kept index needs.
usage: make-compact-archive.py MAILPACK MAIL ARCHIVE_DIR live|half
"""
import hashlib
import os
import struct
import subprocess
import sys
import tempfile
import zlib

EXPUNGED_UNLINKED = (1 << 31) | (1 << 30)


def index_v17(records):
    head = bytearray(160)
    struct.pack_into(">III", head, 8, 17, 160, 112)
    struct.pack_into(">I", head, 20, len(records))
    struct.pack_into(">I", head, 156, zlib.crc32(bytes(head[:156])))
    out = bytes(head)
    for uid, guid, flags in records:
        r = bytearray(112)
        struct.pack_into(">I", r, 0, uid)
        struct.pack_into(">I", r, 32, flags)
        r[60:80] = guid
        struct.pack_into(">I", r, 108, zlib.crc32(bytes(r[:108])))
        out += bytes(r)
    return out


def main():
    mailpack, mail, archive_dir, shape = sys.argv[1:5]
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(mail) for f in fs)
    batches = [files[i::10] for i in range(10)]
    guids = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, batch in enumerate(batches):
            subprocess.run([mailpack, "put", "--archive-dir", archive_dir, "--user", "bench",
                            "--jobs", "2", *batch], check=True, stdout=subprocess.DEVNULL)
            guids.append([hashlib.sha1(open(f, "rb").read()).digest() for f in batch])
            last = k == len(batches) - 1
            records, uid = [], 0
            for j, g in enumerate(guids):
                dead = shape == "half" and last and j < len(batches) // 2
                for guid in g:
                    uid += 1
                    records.append((uid, guid, EXPUNGED_UNLINKED if dead else 0))
            idx = os.path.join(tmp, "cyrus.index")
            with open(idx, "wb") as out:
                out.write(index_v17(records))
            subprocess.run([mailpack, "put", "--archive-dir", archive_dir, "--user", "bench",
                            "--name", "folders/bench-inbox/cyrus.index", idx],
                           check=True, stdout=subprocess.DEVNULL)


main()
