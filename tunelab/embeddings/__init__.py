"""Text-embedding models: tuning an encoder for retrieval, as Vertex AI tunes its embedding models.

    data.py      corpus / queries JSONL and relevance-label TSV (Vertex's format), validation
    model.py     the embedded default (all-MiniLM-L6-v2), any local encoder folder, a tuned bundle;
                 mean pooling + L2 normalisation, optional truncation to ``output_dimensionality``
    metrics.py   recall@k, NDCG@10, MRR@10 (pure functions) and exact cosine search
    loss.py      in-batch-negatives contrastive loss (InfoNCE)
    serving.py   a small LRU cache of loaded encoders for the API

The recipe is ``tunelab/recipes/embedding.py``, the job pipeline ``tunelab/jobs/embedding_pipeline.py``.
"""
