"""The library of the composed image retrieval system (CLIP4Cir, reimplemented and improved).

Data path: encoders -> feature files -> index -> `compose` -> `search`, one function each, used by the
server, the API, the command lines and evaluation alike:

    data/        dataset layouts (catalogue, FashionIQ, CIRR, folders): records and annotated triplets
    images       the one image-decoding policy (regular files, EXIF orientation, sRGB)
    encoders/    `load(name)`: lite (offline default), hf:/openai: CLIP, bof (classical); preprocessing
    extraction/  one-shot feature extraction into verified feature folders (local or Ray engine)
    index/       feature folders and `search`, the only ranking code (exact, faiss, Milvus backends)
    combiner     the CLIP4Cir Combiner, `combine` and `compose` (reference + caption -> query)
    catalog/     generated composed queries over the catalogue: descriptions, phrasings, conditions, triplets
    evaluation/  metrics, the papers' protocols, CIRR submission files, plots
    training/    the lite heads, stage 1 (text side) and stage 2 (Combiner), typed configs
    explain      Grad-CAM of the search's score
    serving/     the demo without HTTP; web/ its Flask layer; cli/ the command lines

Nothing in this package imports a top-level module of the checkout (app.py, train.py ...): those are
entry points over it.
"""
__version__ = "0.18.0"
