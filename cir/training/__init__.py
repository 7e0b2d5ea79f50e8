"""Training: the lite heads (align), stage 1 (the text side) and stage 2 (the Combiner) of CLIP4Cir, and
what they train and validate on."""
