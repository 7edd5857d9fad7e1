"""CoRe heads: attention-based re-ranking with contrastive retrieval heads (reproduction library)."""

from .data import Collection, first_stage, load_collection, load_detection, sample_queries
from .evaluate import evaluate_run
from .heads import HeadScores, HeadSet, detect_heads, released_heads
from .models import LoadedModel, load_model
from .rerank import RankedDoc, Reranker, detection_records
from .scoring import QueryRecord, RecordStore, doc_scores, record_run

__all__ = [
    "Collection", "HeadScores", "HeadSet", "LoadedModel", "QueryRecord", "RankedDoc", "RecordStore", "Reranker",
    "detect_heads", "detection_records", "doc_scores", "evaluate_run", "first_stage", "load_collection",
    "load_detection", "load_model", "record_run", "released_heads", "sample_queries",
]
