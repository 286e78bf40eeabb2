"""Public search over Elasticsearch (placeholder until the indexer work lands)."""

from fastapi import APIRouter

router = APIRouter(tags=["search"])
