"""Core: from a training row to its cached vectors (docs/design.md#vector-families).

    rows.py       what a training row is (shapes, turn order, ids), checked before any model loads
    sources.py    the data files (JSONL, parquet, a save_to_disk directory, a directory of shards) and
                  their records in order, streamed a batch at a time, with file and line
    readers.py    validated rows from a source, scanned once, streamed part by part
    encode.py     token ids and the loss mask, exactly as the model was trained on the row
    models.py     loading a causal LM, its decoder layers, its weights fingerprint
    capture.py    forward hooks (context managers) that keep the tensors the vectors are made of
    families/     the vector families, one registered class per file (residual change, pooled, mean
                  activation, projected gradient): their formulas
    vectors.py    one forward and backward pass over a batch gives every family's vectors
"""

#: what a query's gradient differentiates (:func:`actindex.core.vectors.token_terms`): the loss, or TRAK's margin
MEASUREMENTS = ("loss", "margin")
