#!/usr/bin/env python3
"""A Chroma application for tests/mirror.rs: the real chromadb HttpClient.

Usage: python mirror_client.py MODE URL [ARGS...]

Modes (collection `basic` of the test fixtures, 8-dimensional vectors):

- `full URL`: adds, upserts, updates (metadata-only too), deletes by id and
  by `where` filter, then reads (get, count, query); prints what it read as
  JSON. Run against the mirror and against a copy of the server directly,
  the two outputs must be identical.
- `batch URL N PREFIX`: N writes (upserts of new ids, updates, deletes);
  every one must succeed.
- `writer URL N`: N upserts/deletes on a small set of ids, each retried
  until it succeeds (the mirror is killed and restarted meanwhile).
- `load URL K N`: client K's N requests on its own ids: per id an upsert,
  then an update, then sometimes a delete.
- `one URL ID`: one upsert; an error (the mirror dying under it) is
  printed, not raised.
"""
import json
import math
import os
import sys
import time
from urllib.parse import urlparse

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
import chromadb  # noqa: E402

COLLECTION = "basic"


def emb(i):
    # Distinct for every i (no two records share a vector, so a nearest
    # neighbour is never a tie).
    return [math.sin(i * 1.3 + k * 0.7) for k in range(8)]


def connect(url):
    u = urlparse(url)
    client = chromadb.HttpClient(host=u.hostname, port=u.port)
    return client.get_collection(COLLECTION, embedding_function=None)


def retry(f, deadline_s=120):
    """Calls f until it succeeds (connection errors while the mirror restarts)."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            return f()
        except Exception as e:  # noqa: BLE001 - any transport error
            if time.monotonic() > end:
                raise
            print(f"retrying after: {type(e).__name__}: {e}", file=sys.stderr)
            time.sleep(0.1)


def plain(v):
    """JSON-able: numpy arrays to lists, floats rounded (same on both sides)."""
    if v is None:
        return None
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, float):
        return round(v, 5)
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    return v


def full(url):
    col = connect(url)
    ids = [f"mx-{i}" for i in range(20)]
    col.add(
        ids=ids,
        embeddings=[emb(i) for i in range(20)],
        documents=[f"mirror doc {i}" for i in range(20)],
        metadatas=[{"page": 1000 + i, "group": "even" if i % 2 == 0 else "odd"} for i in range(20)],
    )
    col.upsert(
        ids=["mx-0", "mx-1", "mx-new"],
        embeddings=[emb(100), emb(101), emb(102)],
        documents=["up 0", "up 1", "up new"],
        metadatas=[{"page": 2000}, {"page": 2001, "group": "odd"}, {"page": 2002, "group": "even"}],
    )
    # Metadata-only updates: Chroma merges keys, the mirror must read back the merge.
    col.update(ids=["mx-2", "mx-3"], metadatas=[{"edited": True}, {"group": "even", "extra": 1.5}])
    col.update(ids=["mx-4"], documents=["doc edited"], embeddings=[emb(104)])
    # An existing fixture record, metadata merged with its many keys.
    col.update(ids=["doc-0001"], metadatas=[{"label": "changed through the mirror"}])
    col.delete(ids=["mx-5", "doc-0002"])
    col.delete(where={"group": "odd"})
    # Fixture records too: the table must lose them.
    col.delete(where={"$and": [{"page": {"$gte": 290}}, {"page": {"$lt": 1000}}]})
    out = {"count": col.count()}
    g = col.get(
        ids=ids + ["mx-new", "doc-0001", "doc-0002", "doc-0295"],
        include=["documents", "metadatas", "embeddings"],
    )
    rows = {}
    for i, rid in enumerate(g["ids"]):
        rows[rid] = {
            "document": g["documents"][i],
            "metadata": plain(g["metadatas"][i]),
            "embedding": plain(g["embeddings"][i]),
        }
    out["get"] = rows
    # mx-2 kept its vector (its update was metadata-only): it is its own
    # nearest neighbour. Only the first hit is compared: the rest of an
    # approximate search may differ between two servers' HNSW graphs.
    q = col.query(query_embeddings=[emb(2)], n_results=5, include=["distances", "documents", "metadatas"])
    out["query"] = {
        "n": len(q["ids"][0]),
        "top": q["ids"][0][0],
        "distance": round(float(q["distances"][0][0]), 4),
        "document": q["documents"][0][0],
        "metadata": plain(q["metadatas"][0][0]),
    }
    out["where"] = sorted(col.get(where={"group": "even"}, include=[])["ids"])
    print(json.dumps(out, sort_keys=True))


def batch(url, n, prefix):
    col = connect(url)
    for i in range(n):
        rid = f"{prefix}-{i // 3}"
        step = i % 3
        if step == 0:
            col.upsert(ids=[rid], embeddings=[emb(i)], documents=[f"{prefix} {i}"], metadatas=[{"i": i}])
        elif step == 1:
            col.update(ids=[rid], metadatas=[{"i": i, "updated": True}])
        elif (i // 3) % 2 == 0:
            col.delete(ids=[rid])
        else:
            col.upsert(ids=[rid], embeddings=[emb(i + 1)], documents=[f"{prefix} {i} again"])


def writer(url, n):
    col = retry(lambda: connect(url))
    for i in range(n):
        rid = f"w-{i % 40}"
        if i % 5 == 4:
            retry(lambda: col.delete(ids=[rid]))
        else:
            retry(lambda: col.upsert(
                ids=[rid], embeddings=[emb(i)], documents=[f"writer {i}"], metadatas=[{"n": i}]))


def load(url, k, n):
    col = connect(url)
    done = 0
    i = 0
    while done < n:
        rid = f"load-{k}-{i}"
        col.upsert(ids=[rid], embeddings=[emb(i + k)], documents=[f"load {k} {i}"], metadatas=[{"k": k, "i": i, "v": 1}])
        done += 1
        if done < n:
            col.update(ids=[rid], documents=[f"load {k} {i} v2"], embeddings=[emb(i + k + 1)], metadatas=[{"v": 2}])
            done += 1
        if done < n and i % 3 == 0:
            col.delete(ids=[rid])
            done += 1
        i += 1


def one(url, rid):
    col = connect(url)
    try:
        col.upsert(ids=[rid], embeddings=[emb(7)], documents=["one"], metadatas=[{"one": 1}])
        print("ok")
    except Exception as e:  # noqa: BLE001
        print(f"error: {type(e).__name__}")


def main():
    mode, url = sys.argv[1], sys.argv[2]
    if mode == "full":
        full(url)
    elif mode == "batch":
        batch(url, int(sys.argv[3]), sys.argv[4])
    elif mode == "writer":
        writer(url, int(sys.argv[3]))
    elif mode == "load":
        load(url, int(sys.argv[3]), int(sys.argv[4]))
    elif mode == "one":
        one(url, sys.argv[3])
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
