"""Independent check of a table lanceferry wrote, with the real Python
`chromadb` and `lancedb` packages.

Usage: python check_lance.py CHROMA_COPY LANCEDB_URI COLLECTION TABLE

Reads every record of COLLECTION with chromadb (from a private copy of the
directory) and every row of TABLE with lancedb, under the original tool's
mapping (doc_id, content, vector, canvas_file, node_id, metadata_json), and
compares them all; then searches the table with one record's vector and
expects that record first. Prints one JSON line with the figures; exits 1 on
any difference.
"""
import json
import math
import os
import sys

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
import chromadb  # noqa: E402
import lancedb  # noqa: E402

chroma_path, uri, collection, table = sys.argv[1:5]
col = chromadb.PersistentClient(path=chroma_path).get_collection(collection, embedding_function=None)
# Paged, as a careful user would: one huge get() exceeds SQLite's limits.
got = {"ids": [], "embeddings": [], "documents": [], "metadatas": []}
offset = 0
while True:
    page = col.get(include=["embeddings", "documents", "metadatas"], limit=5000, offset=offset)
    if not page["ids"]:
        break
    for k in got:
        got[k].extend(list(page[k]))
    offset += len(page["ids"])
t = lancedb.connect(uri).open_table(table)
schema = {f.name: str(f.type) for f in t.schema}
rows = {r["doc_id"]: r for r in t.to_arrow().to_pylist()}
problems = []
if len(rows) != len(got["ids"]):
    problems.append(f"row count {len(rows)} != source {len(got['ids'])}")
for i, rid in enumerate(got["ids"]):
    r = rows.get(rid)
    if r is None:
        problems.append(f"missing {rid}")
        continue
    meta = got["metadatas"][i] or {}
    if r["content"] != got["documents"][i]:
        problems.append(f"content of {rid}")
    if r["canvas_file"] != meta.get("canvas_file") or r["node_id"] != meta.get("node_id"):
        problems.append(f"lifted metadata of {rid}")
    if (json.loads(r["metadata_json"]) if r["metadata_json"] else {}) != meta:
        problems.append(f"metadata_json of {rid}")
    a, b = r["vector"], list(got["embeddings"][i])
    cos = sum(x * y for x, y in zip(a, b)) / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))
    if len(a) != len(b) or cos < 0.999999:
        problems.append(f"vector of {rid}: cosine {cos}")
probe = got["ids"][len(got["ids"]) // 2]
hit = t.search(list(got["embeddings"][len(got["ids"]) // 2])).limit(1).to_list()[0]["doc_id"]
if hit != probe:
    problems.append(f"search for {probe}'s vector returned {hit}")
print(json.dumps({"rows": len(rows), "schema": schema, "nearest_ok": hit == probe, "problems": problems[:10]}))
sys.exit(1 if problems else 0)
