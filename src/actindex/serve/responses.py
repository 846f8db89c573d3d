"""What the HTTP API answers: one pydantic model per response body, so that the OpenAPI schema (``/docs``,
``/redoc``, ``/openapi.json``) shows every answer and every error a client can get.

The models describe the JSON the server sends; ``/info``, ``/query``, ``/search`` and ``/rows`` send their JSON
as it is, without validating it again through these models (tests/test_serve.py validates them).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorOut(BaseModel):
    """Every error: one line saying what was wrong with the request (or the server)."""

    detail: str = Field(description="What went wrong, in one line.")


#: the errors every endpoint that reads the index can answer, by status
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "The request asks for something the index cannot answer (an unknown "
                                            "behaviour, family, layer or record field, a vector of the wrong size)."},
    401: {"model": ErrorOut, "description": "The server requires a token: send `Authorization: Bearer <token>`."},
    422: {"model": ErrorOut, "description": "The body is malformed: a missing or mistyped field, a value out of "
                                            "range, a page larger than the server allows."},
    500: {"model": ErrorOut, "description": "The server failed while answering."},
}


class HealthOut(BaseModel):
    status: str = Field(description="Always `ok` while the server answers.")
    rows: int = Field(description="Rows in the index.")
    model_loaded: bool = Field(description="Whether the model is in memory (needed for queries not yet cached).")
    model_busy: bool = Field(description="Whether a model pass is running now (other requests are still answered).")
    uptime_s: float = Field(description="Seconds since the server started.")


class AnswerOut(BaseModel):
    prompt: str = Field(description="A prompt of the query.")
    answer: str = Field(description="The model's answer to it (greedy), the output whose training rows are ranked.")


class ModelOut(BaseModel):
    """The model the index was built with (a query's vectors are formed with it)."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(description="How the model was named when the index was built.")
    architecture: str = Field(description="Its architecture (LlamaForCausalLM, ...).")
    fingerprint: str = Field(description="A hash of its weights: another model's queries are refused.")
    tokenizer: str = Field(description="A hash of its tokenizer.")
    num_layers: int = Field(description="Its transformer blocks.")
    hidden_size: int = Field(description="Its width.")


class FamilyOut(BaseModel):
    """One kind of stored vector at one layer (`residual_change/18`), searchable by POST /search."""

    model_config = ConfigDict(extra="allow")
    dim: int = Field(description="The vectors' width: a /search vector of this family has this many values.")
    dtype: str = Field(description="How they are stored: int4 (the default), int8, float16 or float32.")
    faiss_factory: str = Field(description="How they are searched: Flat (exact), IVF...,Flat (approximate), or "
                                           "store (exact, from the stored vectors).")


class InfoOut(BaseModel):
    """What the index holds: its rows, the model and layers it was built with, its vector families and data."""

    model_config = ConfigDict(extra="allow")
    rows: int = Field(description="Rows in the index.")
    valid_rows: int = Field(description="Rows a search can return (a row with a non-finite loss or vector is not).")
    layers: list[int] = Field(description="The model layers whose vectors are stored (`layer` of POST /query).")
    model: ModelOut
    families: dict[str, FamilyOut] = Field(description="The vector families, by name (`family` of POST /search).")
    data: dict[str, Any] = Field(description="The training data the rows come from: its path (relative to the "
                                             "data's own folder), rows and sha256, and in `files` each file's.")
    actindex_version: str = Field(description="The release that built the index.")


class BehaviorOut(BaseModel):
    name: str = Field(description="The behaviour's name, as `behavior` of POST /query takes it.")
    description: str = Field(description="What the behaviour is.")
    cached: bool = Field(description="Whether its vectors are in the index's behaviour cache: a query of it needs "
                                     "no model pass and answers in milliseconds.")
    damaged: str | None = Field(None, description="Why its cache entry cannot be used (then it is not cached: the "
                                                  "next query forms it again with the model and replaces the entry).")


class CacheEntryOut(BaseModel):
    """One file of the index's behaviour cache: a cached behaviour, or a damaged entry and why."""

    key: str = Field(description="The entry's key (its file name): a hash of the index's identity and the "
                                 "behaviour's content.")
    behavior: str = Field(description="The behaviour's name (`?` for a damaged entry).")
    source: str = Field(description="Where the behaviour came from: a built-in's or a file's name, or `<request>`.")
    families: list[str] = Field(description="The vector families its vectors are stored for.")
    conversations: int = Field(description="The conversations (prompt and answer) whose vectors are stored.")
    gradient: bool = Field(description="Whether its full query gradient is stored (for an exact rerank).")
    bytes: int = Field(description="The entry's size on disk.")
    created_at: str = Field(description="When it was written.")
    problem: str | None = Field(description="Why a damaged entry cannot be used; null for a cached behaviour.")
    answers: list[AnswerOut] = Field(description="A query of the model's own answers (`generate`): each prompt and "
                                                 "the answer the model gave.")


class HitOut(BaseModel):
    """One ranked training row."""

    model_config = ConfigDict(extra="allow")
    rank: int = Field(description="Its rank, from 1 (a page starting at `offset` starts at offset + 1).")
    row: int = Field(description="Its row number in the index.")
    id: str = Field(description="Its id (GET /rows/{id}).")
    score: float = Field(description="How strongly training on it pushes the model towards the behaviour: a cosine "
                                     "for a single method, for a fused one robust standard deviations above the "
                                     "typical row. Negative: it inhibits the behaviour.")
    snippet: str = Field(description="A one-line preview of the record.")
    record: dict[str, Any] | None = Field(None, description="The original training record, every field.")
    fused: float | None = Field(None, description="A fused method's own score, the one the rows are ordered by.")
    influence: float | None = Field(None, description="The exact influence, when the query was reranked.")
    module_scores: dict[str, float] | None = Field(None, description="The influence per model module.")
    tokens: list[str] | None = Field(None, description="The row's tokens, with per-token influence.")
    token_scores: list[float] | None = Field(None, description="Each token's share of the influence.")
    token_response: list[bool] | None = Field(None, description="Whether each token is in the response.")


class QueryOut(BaseModel):
    """The ranked rows for one behaviour and method."""

    model_config = ConfigDict(extra="allow")
    behavior: str = Field(description="The behaviour's name.")
    method: str = Field(description="The method that ranked the rows.")
    family: str = Field(description="The vectors searched (for a fused method, the rule over its members).")
    seconds: float = Field(description="Time taken to answer.")
    timings: dict[str, float] = Field(description="Where the time went, in seconds.")
    cached: bool = Field(description="Whether the behaviour came from the behaviour cache (no model pass).")
    notes: list[str] = Field(description="What the reader should know about how the rows were ranked.")
    warnings: list[str] = Field(description="What may make the ranking less trustworthy.")
    members: list[dict[str, Any]] = Field(description="A fused method's members: method, layer, family, weight.")
    answers: list[AnswerOut] = Field([], description="A query of the model's own answers (`generate`): each prompt "
                                                     "and the answer the model gave, whose rows are ranked.")
    top: list[HitOut] = Field(description="The rows that push towards the behaviour most, best first.")
    bottom: list[HitOut] = Field(description="The rows that inhibit it most (when `bottom_k` was asked).")


class SearchOut(BaseModel):
    family: str = Field(description="The vectors searched.")
    scores: list[float] = Field(description="Cosine of each row with the query vector, best first.")
    rows: list[int] = Field(description="The rows' numbers in the index.")
    ids: list[str] = Field(description="The rows' ids (GET /rows/{id}).")


class RowOut(BaseModel):
    id: str = Field(description="The row's id.")
    row: int = Field(description="Its row number in the index.")
    record: dict[str, Any] | list[Any] | str | float | bool | None = Field(
        description="The original training record, every field.")
    loss: float | None = Field(description="The model's loss on the row's response tokens (null where it is not "
                                            "finite: then the row is not valid).")
    n_tokens: int = Field(description="Tokens in the row.")
    n_response: int = Field(description="Tokens of the response (those the loss counts).")
    valid: bool = Field(description="Whether the row is searchable (a row with a non-finite loss or vector is not).")
    source_row: int = Field(description="Its row number in its data file (-1 where unknown).")
    line: int = Field(description="Its line in its data file (0 where unknown).")
    file: str = Field(description="Its data file, relative to the data's own folder (unless the server shows "
                                  "paths on its machine).")


class RowsOut(BaseModel):
    rows: list[RowOut] = Field(description="The rows found, in the order their ids were asked.")
    missing: list[str] = Field(description="The ids asked that no row of the index has.")
