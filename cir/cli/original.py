"""The original CLIP4Cir scripts' flags and this project's, declared once: the table (FLAGS) that the commands'
parsers take their aliases from, docs/training.md shows, and `translate` uses to turn one of the original
command lines into ours.

    python -m cir.cli.original combiner_train.py --dataset CIRR --num-epochs 300 --combiner-lr 2e-5 ...

prints the equivalent `python3 train.py combiner ...` (the scripts' own defaults come with it as
`--preset clip4cir-argparse` and `--encoder openai:RN50x4`). Accepted as they are by our parsers (aliases):
every Flag with alias=True. Not: the original's --batch-size (ours is --batch: our --batch-size is the
feature-extraction batch, the original's --clip-bs), clip_fine_tune.py's --encoder (ours is --side: our
--encoder names the model) and the validation scripts' --combining-function / --combiner-path pair (ours is
one --combiner); `translate` maps those too.
"""
from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from typing import Sequence

FT, COMB, VAL, SUB = "clip_fine_tune.py", "combiner_train.py", "validate.py", "cirr_test_submission.py"
# Our command for each script, before the translated flags.
SCRIPTS = {FT: ["train.py", "text"], COMB: ["train.py", "combiner"], VAL: ["evaluate.py", "--task", "composed"],
           SUB: ["evaluate.py", "--task", "composed", "--dataset", "cirr", "--split", "test1"]}
TRAIN, EVAL, ALL = (FT, COMB), (VAL, SUB), (FT, COMB, VAL, SUB)
SWITCHES = {"--save-training", "--save-best"}   # the original's flags that take no value


@dataclass(frozen=True)
class Flag:
    """One of the original scripts' flags and what it is here."""

    original: str
    ours: str | None                # None: nothing here (dropped by translate)
    scripts: tuple[str, ...]        # the original scripts that have it
    alias: bool                     # our parsers accept the original's name as it is
    note: str = ""


FLAGS: tuple[Flag, ...] = (
    Flag("--dataset", "--dataset", ALL, True, "CIRR / FashionIQ, any case"),
    Flag("--num-epochs", "--epochs", TRAIN, True),
    Flag("--clip-model-name", "--encoder", ALL, True, "NAME becomes openai:NAME (the scripts' default RN50x4)"),
    Flag("--clip-model-path", "--text-encoder", (COMB, VAL, SUB), True,
         "a CLIP fine-tuned by clip_fine_tune.py; its text side is taken"),
    Flag("--encoder", "--side", (FT,), False, "both / text / image; our --encoder names the model"),
    Flag("--learning-rate", "--lr", (FT,), True),
    Flag("--combiner-lr", "--lr", (COMB,), True),
    Flag("--batch-size", "--batch", TRAIN, False,
         "our --batch-size is the feature-extraction batch, the original's --clip-bs"),
    Flag("--clip-bs", "--batch-size", (COMB,), True, "images per batch when features are extracted"),
    Flag("--projection-dim", "--projection-dim", (COMB, VAL, SUB), True,
         "evaluate.py reads the Combiner's sizes from its checkpoint"),
    Flag("--hidden-dim", "--hidden-dim", (COMB, VAL, SUB), True,
         "evaluate.py reads the Combiner's sizes from its checkpoint"),
    Flag("--validation-frequency", "--validation-frequency", TRAIN, True, "validate the first epoch, then every n-th"),
    Flag("--transform", "--transform", ALL, True, "clip, squarepad or targetpad (ours adds resize)"),
    Flag("--target-ratio", "--target-ratio", ALL, True),
    Flag("--save-training", "--save-training", TRAIN, True,
         "every validated epoch's checkpoint and the last training state beside --out"),
    Flag("--save-best", "--save-best", TRAIN, True, "no effect: the best epoch is always --out"),
    Flag("--combining-function", "--combiner", EVAL, False, "sum, or combiner with --combiner-path"),
    Flag("--combiner-path", "--combiner", EVAL, False, "the Combiner checkpoint (.pt as the original saves it)"),
    Flag("--submission-name", "--submission", (SUB,), False,
         "NAME becomes submission/CIRR/NAME.json: the server's two files beside it, as the original names them"),
    Flag("--api-key", None, TRAIN, False, "Comet logging; ours writes .train.json and .train.png"),
    Flag("--workspace", None, TRAIN, False, "Comet logging"),
    Flag("--experiment-name", None, TRAIN, False, "Comet logging"),
)
BY_NAME = {(f.original, s): f for f in FLAGS for s in f.scripts}


def aliases(ours: str, *scripts: str) -> list[str]:
    """The original names our flag `ours` also accepts, for the commands standing for `scripts`."""
    return list(dict.fromkeys(f.original for f in FLAGS if f.alias and f.ours == ours and f.original != ours
                              and set(f.scripts) & set(scripts or ALL)))


def openai_name(value: str) -> str:
    """--clip-model-name NAME as our --encoder: openai:NAME."""
    return value if ":" in value else f"openai:{value}"


def _values(script: str, flag: str, value: str | None) -> list[str]:
    """Our tokens for one original flag (and its value)."""
    f = BY_NAME.get((flag, script))
    if f is None:
        known = sorted(o for o, s in BY_NAME if s == script)
        raise ValueError(f"{script} has no flag {flag} (known: {', '.join(known)})")
    if f.ours is None or flag == "--save-best" or (script in EVAL and flag in ("--projection-dim", "--hidden-dim")):
        return []
    if flag == "--clip-model-name":
        return ["--encoder", openai_name(value or "")]
    if flag == "--dataset":
        return ["--dataset", (value or "").lower()]
    if flag == "--combining-function":
        return ["--combiner", "sum"] if (value or "").lower() == "sum" else []
    if flag == "--submission-name":
        return ["--submission", f"submission/CIRR/{value}.json"]
    return [f.ours] if flag in SWITCHES else [f.ours, value or ""]


def translate(script: str, argv: Sequence[str]) -> list[str]:
    """Our command line (script first) for one of the original scripts' command lines; ValueError for a flag
    the script does not have."""
    script = script.rsplit("/", 1)[-1]
    if script not in SCRIPTS:
        raise ValueError(f"unknown script {script}; known: {', '.join(SCRIPTS)}")
    out, tokens, i = list(SCRIPTS[script]), list(argv), 0
    if script in TRAIN:  # the scripts' own defaults for everything the command line leaves out
        out += ["--preset", "clip4cir-argparse"]
    while i < len(tokens):
        flag, _, inline = tokens[i].partition("=")
        takes = flag not in SWITCHES
        value = (inline or (tokens[i + 1] if i + 1 < len(tokens) else None)) if takes else None
        if takes and value is None:
            raise ValueError(f"{flag} needs a value")
        out += _values(script, flag, value)
        i += 1 if inline or not takes else 2
    if "--encoder" not in out:
        out += ["--encoder", "openai:RN50x4"]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    try:
        print("python3 " + shlex.join(translate(argv[0], argv[1:])))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
