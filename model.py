"""The CLIP4Cir Combiner and the one place that fuses a reference image with a caption (cir.combiner)."""
from cir.combiner import (
    COMBINE_METHODS,
    SHIPPED_COMBINERS,
    Combiner,
    CombinerConfig,
    combine,
    compose,
    element_wise_sum,
    load_method,
)

__all__ = ["COMBINE_METHODS", "SHIPPED_COMBINERS", "Combiner", "CombinerConfig", "combine", "compose",
           "element_wise_sum", "load_method"]
