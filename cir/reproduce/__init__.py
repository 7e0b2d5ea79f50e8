"""One command for a paper's whole pipeline with the authors' settings:

    python3 -m cir.reproduce fashioniq|cirr --data-root DIR --encoder openai:RN50x4 [--out runs/NAME]

features of the dataset's splits in its real layout, stage 1 (`train.py text --preset clip4cir`), stage 2
(`train.py combiner --preset clip4cir` on stage 1's text side), the papers' protocol on val, and for CIRR the
test1 submission files; then a table of the run's numbers beside the papers'. Re-running skips every step
that is up to date. The command is cir/cli/reproduce.py; the steps are pipeline's, the papers' numbers and
the table table's.
"""
from cir.reproduce.pipeline import ReproduceConfig, reproduce
from cir.reproduce.table import PUBLISHED, Published, columns, format_table

__all__ = ["PUBLISHED", "Published", "ReproduceConfig", "columns", "format_table", "reproduce"]
