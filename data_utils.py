"""Dataset layouts: image lists and (reference, caption, target) triplets of the catalogue, FashionIQ, CIRR and
any folder, every annotation entry validated (cir.data)."""
from cir.data import *  # noqa: F403 (this module is cir.data under its design-card name)
from cir.data import __all__  # noqa: F401
