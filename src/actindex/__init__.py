"""actindex: an activation-space training-data attribution index for LLMs.

One pass over the training set caches small per-example vectors (residual-change vectors,
mean activations, projected gradients) in HDF5 with FAISS indexes; any new behaviour becomes a
query vector answered by nearest-neighbour search.

    import actindex
    actindex.build(data="train.jsonl", out="idx")
    idx = actindex.Index.open("idx")
    result = idx.query(behavior="hallucination", k=20)
"""

__version__ = "0.1.0"

from .build import build  # noqa: E402
from .config import BuildConfig  # noqa: E402
from .correct import CorrectConfig, correct  # noqa: E402
from .curvature import CurvatureConfig  # noqa: E402
from .detect import DetectConfig, detect  # noqa: E402
from .errors import ActindexError, DataError, IndexFileError, ModelError  # noqa: E402
from .filtering import FilterConfig, filter_dataset  # noqa: E402
from .index import Index, QueryResult  # noqa: E402
from .models import load_model  # noqa: E402
from .shard import merge  # noqa: E402

__all__ = [
    "ActindexError", "BuildConfig", "CorrectConfig", "CurvatureConfig", "DataError", "Index", "IndexFileError",
    "ModelError", "QueryResult", "build", "correct", "load_model", "merge",
    "DetectConfig", "FilterConfig", "detect", "filter_dataset",
]
