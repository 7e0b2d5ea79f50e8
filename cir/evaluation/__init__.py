"""Evaluation: metrics, the papers' protocols, what evaluate.py runs, CIRR submission files, plots,
and label retrieval (Kmeans-IR)."""
