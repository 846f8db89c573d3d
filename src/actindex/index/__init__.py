"""The index on disk (docs/design.md#the-index-on-disk): built once, read by every later stage.

    config.py       BuildConfig, the settings of ``actindex build``
    build.py        the one-pass build (and its torchrun / shard / append variants)
    manifest.py     the typed, versioned, checksummed manifest: what an index holds
    writer.py       parts committed atomically, vectors.h5 and the FAISS files finalised
    lock.py         the write lock, and nothing written through a link
    reader.py       IndexReader: one typed, checked view of a complete index
    search.py       FAISS indexes over normalised vectors (cosine), factories, recall
    faiss_stream.py flat-coded FAISS files written block by block
    verify.py       every file against its checksum
    shards.py       shards of one build merged into one index
    export.py       the index as one Parquet / Arrow table for other tools, streamed
"""
