"""The ranking backends behind index.search: base (the interface and shared fall-backs), exact, faiss, milvus.

Each backend's private helpers live beside it; faiss and pymilvus are imported on first use.
"""
