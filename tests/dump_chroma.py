"""Dump every collection of a Chroma persistent directory with the real
chromadb client, in the shape of a fixture's truth.json (used to prove a
restored backup opens and holds the same records)."""
import json
import sys

import chromadb

client = chromadb.PersistentClient(path=sys.argv[1])
out = {}
for c in sorted(client.list_collections(), key=lambda c: c.name):
    col = client.get_collection(c.name)
    got = col.get(include=["embeddings", "documents", "metadatas", "uris"])
    emb = got["embeddings"]
    out[c.name] = {
        "count": col.count(),
        "ids": got["ids"],
        "documents": got["documents"],
        "uris": got["uris"],
        "metadatas": got["metadatas"],
        "embeddings": [list(map(float, e)) for e in emb] if emb is not None else [],
    }
json.dump({"collections": out}, sys.stdout)
