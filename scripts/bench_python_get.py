#!/usr/bin/env python3
"""Reader benchmark for the real chromadb client: paged get() of a whole
collection, vectors included, nothing written.

Usage: python bench_python_get.py (--path DIR | --url HOST:PORT) COLLECTION [PAGE]
Prints records, seconds, records/s and MB/s of vectors.
"""
import os
import sys
import time

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
import chromadb  # noqa: E402

mode, at, name = sys.argv[1:4]
page = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
t0 = time.time()
if mode == "--path":
    client = chromadb.PersistentClient(path=at)
else:
    host, port = at.rsplit(":", 1)
    client = chromadb.HttpClient(host=host, port=int(port))
col = client.get_collection(name, embedding_function=None)
offset = 0
values = 0
while True:
    got = col.get(include=["embeddings", "documents", "metadatas"], limit=page, offset=offset)
    n = len(got["ids"])
    if n == 0:
        break
    values += sum(len(e) for e in got["embeddings"])
    offset += n
secs = time.time() - t0
print(f"{offset} records in {secs:.2f} s: {offset / secs:.0f} records/s, "
      f"{values * 4 / 1e6 / secs:.0f} MB/s of vectors")
