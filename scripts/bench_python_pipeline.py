#!/usr/bin/env python3
"""The pipeline a team would otherwise write: chromadb get() pages -> lancedb add.

Usage: python bench_python_pipeline.py CHROMA_DIR LANCEDB_URI COLLECTION [PAGE]

The original tool's mapping (vector, doc_id, content, canvas_file, node_id,
metadata_json), pages of 1,000 by default, vectors handed to pyarrow as
numpy arrays: the fast way to write it in Python. Prints records and seconds.
"""
import json
import os
import sys
import time

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
import chromadb  # noqa: E402
import lancedb  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

src, uri, name = sys.argv[1:4]
page = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
t0 = time.time()
col = chromadb.PersistentClient(path=src).get_collection(name, embedding_function=None)
db = lancedb.connect(uri)
table = None
offset = 0
while True:
    got = col.get(include=["embeddings", "documents", "metadatas"], limit=page, offset=offset)
    n = len(got["ids"])
    if n == 0:
        break
    emb = np.asarray(got["embeddings"], dtype=np.float32)
    metas = [m or {} for m in got["metadatas"]]
    batch = pa.table({
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1]),
        "doc_id": got["ids"],
        "content": got["documents"],
        "canvas_file": [m.get("canvas_file") for m in metas],
        "node_id": [m.get("node_id") for m in metas],
        "metadata_json": [json.dumps(m, sort_keys=True) for m in metas],
    })
    if table is None:
        table = db.create_table(name, batch)
    else:
        table.add(batch)
    offset += n
print(json.dumps({"records": offset, "seconds": round(time.time() - t0, 3)}))
