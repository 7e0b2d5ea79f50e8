"""Descriptions of catalogue items: an item's attributes as the text people type about it.

The catalogue has attributes but no text about them. These functions turn a product's attributes into the
phrases people type ("a red casual t-shirt for men", "black formal shoes"): descriptions of one item, used
to train the lite encoder's heads (with the product names), as the text of the demo's tags mode, and, in the
relative captions of triplets (phrasings.py), to word what should change. In this project a "caption" is
always a relative caption (how the wanted item differs from the reference); a "description" says what one
item is. Wording is deterministic given a `random.Random`, so training data is reproducible from a seed.
"""
from __future__ import annotations

import random
from typing import Mapping

from cir.data import known

# articleType -> (singular, plural) as a shopper says it. Types missing here fall back to lower case.
ARTICLE_NAMES: dict[str, tuple[str, str]] = {
    "Tshirts": ("t-shirt", "t-shirts"), "Shirts": ("shirt", "shirts"), "Casual Shoes": ("casual shoe", "casual shoes"),
    "Tops": ("top", "tops"), "Kurtas": ("kurta", "kurtas"), "Sports Shoes": ("sports shoe", "sports shoes"),
    "Watches": ("watch", "watches"), "Handbags": ("handbag", "handbags"), "Heels": ("heel", "heels"),
    "Sunglasses": ("pair of sunglasses", "sunglasses"), "Sweaters": ("sweater", "sweaters"),
    "Sandals": ("sandal", "sandals"), "Wallets": ("wallet", "wallets"), "Flip Flops": ("flip flop", "flip flops"),
    "Sweatshirts": ("sweatshirt", "sweatshirts"), "Belts": ("belt", "belts"), "Trousers": ("trouser", "trousers"),
    "Formal Shoes": ("formal shoe", "formal shoes"), "Jeans": ("pair of jeans", "jeans"), "Socks": ("sock", "socks"),
    "Jackets": ("jacket", "jackets"), "Flats": ("flat", "flats"), "Backpacks": ("backpack", "backpacks"),
    "Briefs": ("brief", "briefs"), "Shorts": ("pair of shorts", "shorts"),
    "Innerwear Vests": ("vest", "vests"), "Caps": ("cap", "caps"), "Track Pants": ("track pant", "track pants"),
    "Ties": ("tie", "ties"), "Kurtis": ("kurti", "kurtis"), "Clutches": ("clutch", "clutches"),
    "Dresses": ("dress", "dresses"), "Mufflers": ("muffler", "mufflers"),
    "Accessory Gift Set": ("accessory gift set", "accessory gift sets"), "Skirts": ("skirt", "skirts"),
    "Trunk": ("trunk", "trunks"), "Scarves": ("scarf", "scarves"),
    "Perfume and Body Mist": ("perfume", "perfumes"), "Cufflinks": ("cufflink", "cufflinks"),
    "Capris": ("capri", "capris"), "Laptop Bag": ("laptop bag", "laptop bags"), "Tunics": ("tunic", "tunics"),
    "Stockings": ("stocking", "stockings"), "Leggings": ("legging", "leggings"),
    "Duffel Bag": ("duffel bag", "duffel bags"), "Mobile Pouch": ("mobile pouch", "mobile pouches"),
    "Deodorant": ("deodorant", "deodorants"), "Tracksuits": ("tracksuit", "tracksuits"),
    "Sports Sandals": ("sports sandal", "sports sandals"), "Bra": ("bra", "bras"), "Gloves": ("glove", "gloves"),
    "Messenger Bag": ("messenger bag", "messenger bags"), "Dupatta": ("dupatta", "dupattas"),
    "Umbrellas": ("umbrella", "umbrellas"), "Hat": ("hat", "hats"), "Waistcoat": ("waistcoat", "waistcoats"),
    "Boxers": ("boxer", "boxers"), "Sarees": ("saree", "sarees"), "Bracelet": ("bracelet", "bracelets"),
    "Tights": ("tights", "tights"), "Lounge Shorts": ("pair of lounge shorts", "lounge shorts"),
    "Lounge Pants": ("pair of lounge pants", "lounge pants"), "Rucksacks": ("rucksack", "rucksacks"),
    "Kurta Sets": ("kurta set", "kurta sets"), "Headband": ("headband", "headbands"),
    "Necklace and Chains": ("necklace", "necklaces"),
}
# Words that read as plurals are used in their plural form even for one item ("black jeans").
PLURAL_ONLY = {"Sunglasses", "Jeans", "Shorts", "Trousers", "Track Pants", "Capris", "Leggings", "Briefs",
               "Boxers", "Socks", "Flip Flops", "Stockings", "Gloves", "Cufflinks", "Casual Shoes",
               "Sports Shoes", "Formal Shoes", "Heels", "Sandals", "Flats", "Sports Sandals", "Tights",
               "Lounge Shorts", "Lounge Pants"}
GENDER_PHRASES = {"Men": ("men", "men's"), "Women": ("women", "women's"), "Boys": ("boys", "boys'"),
                  "Girls": ("girls", "girls'"), "Unisex": ("anyone", "unisex")}
COLOUR_PHRASES = {"Multi": "multicoloured", "Navy Blue": "navy blue", "Off White": "off-white",
                  "Grey Melange": "grey melange"}
USAGE_PHRASES = {"Casual": "casual", "Formal": "formal", "Sports": "sporty", "Ethnic": "ethnic",
                 "Smart Casual": "smart casual", "Travel": "travel"}


def article_phrase(article_type: str, plural: bool = False) -> str:
    """'Tshirts' -> 't-shirt'; plural-only items keep their plural ('jeans')."""
    sing, plur = ARTICLE_NAMES.get(article_type, (article_type.lower(), article_type.lower()))
    if plural or article_type in PLURAL_ONLY:
        return plur
    return sing


def article_with_a(article_type: str) -> str:
    """'Tshirts' -> 'a t-shirt', 'Jeans' -> 'jeans' (plural-only items take no article)."""
    phrase = article_phrase(article_type)
    return phrase if article_type in PLURAL_ONLY else with_a(phrase)


def colour_phrase(colour: str) -> str:
    """'Navy Blue' -> 'navy blue'; a missing colour has no phrase ('')."""
    return COLOUR_PHRASES.get(colour, colour.lower()) if known(colour) else ""


def usage_phrase(usage: str) -> str:
    """'Sports' -> 'sporty'; a missing usage has no phrase ('')."""
    return USAGE_PHRASES.get(usage, usage.lower()) if known(usage) else ""


def with_a(phrase: str) -> str:
    """'olive one' -> 'an olive one'."""
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def describe(attrs: Mapping[str, str], rng: random.Random) -> str:
    """One description of a catalogue item from its attributes, in a shape picked at random from many."""
    art_type = attrs.get("articleType", "")
    plural_only = art_type in PLURAL_ONLY
    art = article_phrase(art_type)
    col = colour_phrase(attrs.get("baseColour", ""))
    use = usage_phrase(attrs.get("usage", ""))
    g_noun, g_adj = GENDER_PHRASES.get(attrs.get("gender", ""), ("", ""))

    def join(*words: str) -> str:
        return " ".join(w for w in words if w)

    noun = join(col if rng.random() < 0.85 else "", use if rng.random() < 0.5 else "", art)
    shapes = [
        lambda: noun if plural_only else with_a(noun),
        lambda: join(noun if plural_only else with_a(noun), f"for {g_noun}" if g_noun else ""),
        lambda: join(g_adj, noun),
        lambda: join(art, f"in {col}" if col else ""),
        lambda: join(col, art),
        lambda: join(g_adj, col, art),
        lambda: join(use, art, f"for {g_noun}" if g_noun else ""),
        lambda: join("a photo of", noun if plural_only else with_a(noun)),
        lambda: join(col, use, art),
        lambda: join(art, "that is", col) if col else art,
    ]
    text = rng.choice(shapes)()
    return text if text.strip() else art


def training_descriptions(attrs: Mapping[str, str], rng: random.Random, n: int) -> list[str]:
    """The texts an item's image is aligned with (train.py align): its product name once, then descriptions."""
    out = []
    name = attrs.get("productDisplayName", "").strip()
    if name:
        out.append(name)
    while len(out) < n:
        out.append(describe(attrs, rng))
    return out
