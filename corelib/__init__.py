"""CoRe heads: attention-based re-ranking with contrastive retrieval heads (reproduction library)."""

from .data import Collection, load_collection, load_detection, sample_queries
from .first_stage import first_stage
from .evaluate import evaluate_run
from .heads import HeadScores, HeadSet, detect_heads, released_heads
from .models import LoadedModel, ModelSpec, load_model, model_spec
from .records import QueryRecord, RecordStore
from .rerank import RankedDoc, RankedResults, Reranker, detection_records
from .scoring import doc_scores, record_run

__all__ = [
    "Collection", "HeadScores", "HeadSet", "LoadedModel", "ModelSpec", "QueryRecord", "RankedDoc", "RankedResults", "RecordStore", "Reranker",
    "detect_heads", "detection_records", "doc_scores", "evaluate_run", "first_stage", "load_collection",
    "load_detection", "load_model", "model_spec", "record_run", "released_heads", "sample_queries",
]
