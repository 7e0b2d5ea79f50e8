"""Relative captions of catalogue triplets: many wordings of each edit, as shoppers type them.

Every function picks one template with `pick`, which also holds out every 4th template of each list: training
on phrasings="train" and testing on "heldout" measures how well a model handles wordings it never saw. Lists
are long (16-30) so that the held-out quarter is itself varied. Order matters: appending keeps earlier
templates in their partition, inserting moves them. Typos ("womens", "color", "stipes") are on purpose.
"""
from __future__ import annotations

import random

from cir.catalog.descriptions import article_phrase, article_with_a, colour_phrase, usage_phrase, with_a

PHRASINGS = ("all", "train", "heldout")


def pick(rng: random.Random, shapes: list[str], phrasings: str) -> str:
    """One phrasing; every 4th template is held out, so training can be checked on wordings it never saw."""
    if phrasings == "train":
        shapes = [x for i, x in enumerate(shapes) if i % 4 != 3]
    elif phrasings == "heldout":
        shapes = [x for i, x in enumerate(shapes) if i % 4 == 3]
    return rng.choice(shapes)


def join(rng: random.Random, a: str, b: str, phrasings: str = "all") -> str:
    """Two single-change captions as one."""
    return pick(rng, [f"{a} and {b}", f"{a}, {b}", f"{b} and {a}", f"{a}; also {b}",
                      f"{a}, and {b}", f"{b}, {a}", f"{a} plus {b}", f"{a} - {b}"], phrasings)


# ----------------------------------------------------------------------------------------------- colour, type, usage

def colour_caption(rng: random.Random, new: str, old: str, phrasings: str = "all") -> str:
    c, o = colour_phrase(new), colour_phrase(old)
    return pick(rng, [
        f"is {c} instead of {o}", f"in {c}", f"make it {c}", f"the same but in {c}", f"change the colour to {c}",
        f"{c} rather than {o}", f"I want it in {c}", f"is {c}", f"same style, {c} colour", f"{with_a(c)} one",
        f"not {o}, {c}", f"switch to {c}", f"has {with_a(c)} colour", f"{c} version please",
        f"do you have this in {c}?", f"looking for {with_a(c)} one", f"similar but {c}", f"prefer {c} over {o}",
        f"{c} colour", f"swap the {o} for {c}", f"it should be {c}", f"less {o}, more {c}",
        f"want the {c} one", f"shows {with_a(c)} item",
    ], phrasings)


def photo_colour_caption(rng: random.Random, new: str, phrasings: str = "all") -> str:
    """A colour change of a reference whose own colour is not known (a shopper's photo): 'this in red'."""
    c = colour_phrase(new)
    return pick(rng, [
        f"in {c}", f"make it {c}", f"the same but in {c}", f"this in {c}", f"I want it in {c}",
        f"{c} version please", f"do you have this in {c}?", f"same style, {c} colour", f"{with_a(c)} one",
        f"switch to {c}", f"similar but {c}", f"same thing in {c}", f"change the colour to {c}",
        f"looking for this in {c}", f"it should be {c}", f"like this but {c}", f"want the {c} one",
        f"can I get it in {c}", f"{c} please", f"one like this in {c}", f"has {with_a(c)} colour",
        f"this one but {c}", f"same but {c} colour", f"got it in {c}?",
    ], phrasings)


def type_caption(rng: random.Random, new_type: str, old_type: str, colour_kept: bool,
                 phrasings: str = "all") -> str:
    n, o = article_phrase(new_type), article_phrase(old_type)
    an, ao = article_with_a(new_type), article_with_a(old_type)
    shapes = [f"make it {an}", f"{an} instead of {ao}", f"is {an}", f"change it to {an}",
              f"I'd like {an} instead", f"turn it into {an}", f"{n}, not {o}",
              f"show me {article_phrase(new_type, plural=True)}",
              f"looking for {an}", f"swap the {o} for {an}", f"would rather have {an}", f"{an} please"]
    if colour_kept:  # only true when the colour is wanted and does not change
        shapes += [f"same colour but {an}", f"show {n} in this colour", f"{an} in the same colour",
                   f"keep the colour, make it {an}"]
    return pick(rng, shapes, phrasings)


def usage_caption(rng: random.Random, new: str, phrasings: str = "all") -> str:
    u = usage_phrase(new)
    return pick(rng, [
        f"more {u}", f"make it {u}", f"{with_a(u)} one", f"is {u}",
        f"for {u} wear" if new != "Sports" else "for sports",
        f"something {u}", f"{with_a(u)} version", f"I need it {u}", f"should look {u}", f"{with_a(u)} style",
        f"suitable for {u} occasions" if new != "Sports" else "good for working out", f"less casual, more {u}"
        if new != "Casual" else "more relaxed and casual",
    ], phrasings)


# ----------------------------------------------------------------------------------------------- gender

# How shoppers name each gender: the noun, its possessive, the usual typo, one person, who they shop for.
GENDER_WORDS: dict[str, dict] = {
    "Men": {"noun": "men", "poss": "men's", "typo": "mens", "one": "a man", "him": "him", "alt": "gents",
            "people": ("my husband", "my boyfriend", "my dad", "my brother")},
    "Women": {"noun": "women", "poss": "women's", "typo": "womens", "one": "a woman", "him": "her", "alt": "ladies",
              "people": ("my wife", "my girlfriend", "my mum", "my sister")},
    "Boys": {"noun": "boys", "poss": "boys'", "typo": "boys", "one": "a boy", "him": "my little boy", "alt": "boys",
             "people": ("my son", "my nephew", "a 10 year old boy")},
    "Girls": {"noun": "girls", "poss": "girls'", "typo": "girls", "one": "a girl", "him": "my little girl",
              "alt": "girls", "people": ("my daughter", "my niece", "an 8 year old girl")},
}
KIDS = ("Boys", "Girls")


def gender_caption(rng: random.Random, new: str, old: str, phrasings: str = "all") -> str:
    """'make it for women', 'for my husband', 'the kids' size' (new, old: catalogue genders)."""
    w, o = GENDER_WORDS[new], GENDER_WORDS[old]
    person = rng.choice(w["people"])
    shapes = [
        f"make it for {w['noun']}", f"the {w['poss']} version", f"for {person}", f"same for {w['one']}",
        f"do you have this for {w['noun']}?", w["typo"], f"{w['alt']} version", f"{w['poss']} please",
        f"I need it for {w['one']}", f"is there a {w['poss']} one?", f"same thing but for {w['noun']}",
        f"{w['poss']} instead of {o['poss']}", f"for {w['him']}", f"show me the {w['poss']} one",
        f"in {w['poss']} sizes", f"not for {o['noun']}, for {w['noun']}", f"a gift for {person}",
        f"want the same in {w['poss']}", f"the {w['typo']} model", f"looking for this for {person}",
        f"can I get this for {w['noun']}", f"switch it to {w['poss']}", f"same style for {w['noun']}",
        f"buying this for {person}",
    ]
    if new in KIDS and old not in KIDS:
        shapes += ["the kids' size", "a kids' version", "do you have it in kids' sizes?", "smaller, for my kid"]
    elif old in KIDS and new not in KIDS:
        shapes += ["the adult version", "in adult sizes", "a grown-up one", "same for grown-ups"]
    elif new in KIDS:
        shapes += [f"for {w['one']} instead of {o['one']}", f"{w['typo']} version pls"]
    else:
        shapes += [f"the {'female' if new == 'Women' else 'male'} version", f"{w['typo']} version pls"]
    return pick(rng, shapes, phrasings)


# ----------------------------------------------------------------------------------------------- pattern

PATTERN_ADJ = {"Striped": "striped", "Checked": "checked", "Printed": "printed", "Solid": "plain"}
PATTERN_NOUN = {"Striped": "stripes", "Checked": "checks", "Printed": "a print", "Solid": "plain"}


def _to_pattern(new: str, old: str) -> list[str]:
    oa, on = PATTERN_ADJ[old], PATTERN_NOUN[old]
    return {
        "Striped": ["with stripes", "striped instead", "make it striped", "a striped one", "in stripes",
                    "I'd like stripes", "stripes please", "same but striped", f"striped, not {oa}", "has stripes",
                    "do you have it with stripes?", f"with stripes instead of {on}", "a stripy one",
                    "striped pattern", "I want a striped version", "something with stripes", "in a striped design",
                    "prefer stripes", "stipes please", "show me striped ones", "with vertical or horizontal stripes",
                    "striped would be nicer", "change the pattern to stripes", "looking for a striped one"],
        "Checked": ["make it checked", "in a check pattern", "checked please", "a checked one", "with checks",
                    "checks instead", "plaid instead", "in plaid", "a checkered one", "chequered please",
                    "I'd like a check pattern", f"checked, not {oa}", "same but checked",
                    "do you have a checked version?", "something in checks", "show me checked ones",
                    "tartan or checks", "change the pattern to checks", f"checks instead of {on}",
                    "looking for a check design", "prefer checks", "a plaid version", "with a checked pattern",
                    "checkd one pls"],
        "Printed": ["a printed one", "I'd like it with a print", "with a print", "printed please", "make it printed",
                    "with a graphic print", "something with a print on it", "printed instead",
                    f"a print instead of {on}", "with a pattern printed on", "same but printed",
                    "do you have a printed version?", "with a design on it", "has a print", "show me printed ones",
                    "a printed design", "prefer a print", "looking for something printed", "with some print on it",
                    f"printed, not {oa}", "change it to a printed pattern", "one with a print", "printed pls",
                    "I want a print on it"],
        "Solid": ["plain please", "no pattern, just plain", "a plain one", "in a solid colour", "make it plain",
                  "solid instead", f"plain instead of {on}", "without any pattern", "just one colour",
                  "a plain version", "keep it simple, no pattern", "solid colour please", "same but plain",
                  "a solid one", "do you have a plain one?", "nothing on it, plain", f"plain, not {oa}",
                  "I want it plain", "show me plain ones", "a single colour one", "looking for a plain one",
                  "simpler, plain", "palin please", "solid color, no print"],
    }[new]


def pattern_caption(rng: random.Random, new: str, old: str, phrasings: str = "all") -> str:
    """'with stripes', 'make it checked', 'plain please' (new, old: cir.data.PATTERNS values)."""
    return pick(rng, _to_pattern(new, old), phrasings)


# ----------------------------------------------------------------------------------------------- negation

def negate_colour_caption(rng: random.Random, old: str, phrasings: str = "all") -> str:
    c = colour_phrase(old)
    return pick(rng, [
        f"not {c}", f"anything but {c}", f"I don't want {c}", f"any colour except {c}", f"no {c} please",
        f"not in {c}", f"same but not {c}", "any other colour", f"a different colour, not {c}",
        f"something other than {c}", f"{c} is not for me", f"any color but {c}", f"avoid {c}",
        f"not the {c} one", f"in any colour except {c}", f"show me ones that aren't {c}", "other colours please",
        f"anything except {c}", f"no more {c}", f"I'm tired of {c}", f"without {c}", f"not {c} this time",
        f"skip the {c} ones", "different colour please", f"i dont want {c}", f"any colour, just not {c}",
    ], phrasings)


def negate_usage_caption(rng: random.Random, old: str, phrasings: str = "all") -> str:
    u = usage_phrase(old)
    return pick(rng, [
        f"anything but {u}", f"not so {u}", f"less {u}", f"not {u}", f"nothing {u}", f"I don't want it {u}",
        f"it shouldn't be {u}", f"not {u} please", f"something that isn't {u}", f"too {u}, something else",
        f"a less {u} one", f"not as {u}", f"no {u} stuff", f"avoid {u} styles", f"something not so {u}",
        f"nothing too {u}", f"not {u} this time", f"can it be less {u}?", f"without the {u} look",
        f"other than {u}", f"isn't there a non-{u} one?", f"i dont want {u}", f"not really {u}",
        f"a bit less {u}",
    ], phrasings)


def _negate_pattern(old: str) -> list[str]:
    return {
        "Striped": ["no stripes", "without stripes", "not striped", "lose the stripes", "I don't like the stripes",
                    "no stripes please", "same but without the stripes", "anything but stripes",
                    "something not striped", "I don't want stripes", "minus the stripes", "not stripy",
                    "no striped ones", "without the stripe pattern", "stripes aren't for me",
                    "I'd rather not have stripes", "get rid of the stripes", "no strips", "skip the stripes",
                    "same thing without stripes"],
        "Checked": ["not checked", "no checks", "without the checks", "no check pattern", "anything but checks",
                    "lose the checks", "not plaid", "I don't want checks", "without checks please",
                    "same but no checks", "something not checked", "no checkered ones", "checks aren't my thing",
                    "get rid of the checks", "not chequered", "no check please", "I'd rather avoid checks",
                    "same thing without checks", "no chekcs"],
        "Printed": ["without the print", "no print", "not printed", "no prints please", "lose the print",
                    "without a print", "I don't want a print", "same but no print", "anything but printed",
                    "no graphics", "something not printed", "get rid of the print", "no printed design",
                    "without the graphic", "I'd rather not have a print", "not with a print", "no print on it",
                    "same thing without the print", "no prnt"],
        # "Not plain" asks for a pattern: the condition is "any known pattern", not merely "not Solid".
        "Solid": ["not plain", "not so plain", "something with a pattern", "less plain", "too plain, add a pattern",
                  "with some pattern", "anything but plain", "not a plain one", "I don't want plain", "a patterned one",
                  "not solid", "something less boring", "no plain ones", "patterned please",
                  "could it have a pattern?", "not just one colour", "with a pattern instead", "not plian"],
    }[old]


def negate_pattern_caption(rng: random.Random, old: str, phrasings: str = "all") -> str:
    return pick(rng, _negate_pattern(old), phrasings)


# ----------------------------------------------------------------------------------------------- matching, similar

def matching_caption(rng: random.Random, noun: str, plural: bool, phrasings: str = "all") -> str:
    """'shoes to match', 'a watch that goes with this' (noun: 'watch', 'shoes'; plural: takes no article)."""
    def a(adj: str = "") -> str:
        phrase = f"{adj} {noun}".strip()
        return phrase if plural else with_a(phrase)
    goes, match = ("go", "match") if plural else ("goes", "matches")
    return pick(rng, [
        f"{a()} to match", f"I want {a()} in the same colour", a("matching"), f"{a()} that {goes} with this",
        f"need {a()} to go with it", f"what {noun} {goes} with this?", f"complete the look with {a()}",
        f"{a('matching')} please", f"show me {a()} in this colour", f"looking for {a()} to pair with this",
        f"I need {a('matching')}", f"{a()} in the same color", f"{a()} for this", f"what about {a('matching')}?",
        f"do you have {a('matching')}?", f"{a()} in a matching colour", f"pair it with {a()}",
        f"find me {a()} that {match}", f"add {a('matching')}", f"{a('matching')} to complete the outfit",
        f"{a('coordinating')}", f"{a()} that {match} the colour", f"any {noun} to go with this?",
        f"{a('matchng')} pls",
    ], phrasings)


def similar_caption(rng: random.Random, phrasings: str = "all") -> str:
    """'another one like this': same type, gender and colour, another item."""
    return pick(rng, [
        "another one like this", "something similar", "show me more like this", "similar but a different one",
        "other options like this", "more of these", "anything similar?", "more like this please", "a similar one",
        "same kind of thing", "something along these lines", "like this but a different product",
        "alternatives to this", "show me similar items", "got anything else like this?",
        "looking for something like this", "similar style", "a different one, same idea", "more options",
        "more like this one", "do you have others like it?", "similar ones please", "something close to this",
        "smth similar", "show me alternatives", "this but another brand",
    ], phrasings)
