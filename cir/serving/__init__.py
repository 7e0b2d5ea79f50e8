"""The web demo without HTTP, in layers: errors and input validation, caches and metrics, datasets, uploads,
and the engine that loads everything once and answers queries. cir.web is the HTTP layer over it.

    settings  Settings: every option of the demo, one declaration each (drives `python3 app.py`'s flags and CIR_*)
    errors    the ApiError hierarchy (status + a message meant for the user)
    inputs    validation of captions, filters and integers a client sends
    caching   LRU map (also the cache of caption features, encoders.texts), per-app metrics
    datasets  where datasets are (manifests, datasets file), one loaded Dataset, the damaged ones
    decode    untrusted images decoded at a bounded cost, without metadata
    uploads   the UploadStore: re-encoded user images and their features, within a quota and a TTL
    engine    Engine.load(settings) and Engine.run(request) -> SearchResult: the query path
"""
from cir.serving.engine import Engine, SearchRequest, SearchResult  # noqa: F401 (the package's front door)
from cir.serving.errors import ApiError, BadInput, NotFound, ServiceUnavailable, TooLarge  # noqa: F401
from cir.serving.settings import Settings  # noqa: F401
