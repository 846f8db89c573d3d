"""Querying (docs/design.md#query-methods): a behaviour becomes ranked rows.

    behaviors.py  built-in behaviours, pairs and persona files, completed once with the model
    examples.py   query by example: a model output (or the model's answer to a prompt) as a behaviour
    context.py    QueryContext: query-side vectors computed exactly as the build computed the rows'
    methods/      query methods, one registered class per file (residual change, ..., ensemble)
    fusion/       fusion rules for ensembles, one registered class per file (reciprocal rank fusion)
    curvature/    EK-FAC and LinFAC: kinds, factors, passes, exact influence, storage in the index
    rerank.py     exact influence on the search's candidates
    pipeline.py   QueryConfig and QueryPipeline: members -> vectors -> search -> fuse -> rerank
    result.py     Hit and QueryResult
"""
