"""Generated composed queries over the product catalogue: item descriptions, caption phrasings,
conditions (what counts as a right result), triplets of 19 kinds, and their FashionIQ / CIRR layouts."""
