"""Small embedded word lists: needle keys (adjective-noun pairs) and a vocabulary for the
common-word task. Shipped here so nothing is downloaded."""

from __future__ import annotations

import random

ADJECTIVES = (
    "amber", "ancient", "bitter", "blue", "bold", "brave", "bright", "broken", "calm", "clever",
    "cold", "crimson", "curious", "dark", "distant", "dusty", "eager", "early", "empty", "fancy",
    "fierce", "fragile", "frozen", "gentle", "giant", "golden", "green", "grumpy", "hidden", "hollow",
    "humble", "icy", "jolly", "lazy", "little", "lively", "lonely", "loud", "lucky", "misty",
    "modern", "muddy", "narrow", "noisy", "odd", "pale", "polite", "proud", "quick", "quiet",
    "rapid", "rough", "royal", "rusty", "shiny", "silent", "silver", "sleepy", "slow", "smooth",
    "soft", "sour", "spicy", "steady", "stormy", "sunny", "swift", "tall", "tender", "tiny",
    "velvet", "violet", "warm", "wild", "windy", "wise", "wooden", "young", "zealous", "zesty",
)

NOUNS = (
    "anchor", "apple", "arrow", "badger", "banner", "basket", "beacon", "bell", "bridge", "brook",
    "candle", "canyon", "castle", "cedar", "cloud", "comet", "compass", "coral", "crow", "desert",
    "dragon", "engine", "falcon", "feather", "forest", "fountain", "garden", "glacier", "harbor", "hammer",
    "island", "jungle", "kettle", "lantern", "meadow", "mirror", "monkey", "needle", "ocean", "orchard",
    "otter", "palace", "pebble", "pepper", "pillow", "planet", "pond", "rabbit", "river", "rocket",
    "saddle", "shadow", "signal", "spider", "spring", "statue", "summit", "thunder", "tiger", "tower",
    "trumpet", "tunnel", "valley", "violin", "volcano", "wagon", "walrus", "whistle", "willow", "window",
)

#: everyday words for the common-word task (distinct, lower case, single tokens for most tokenizers)
VOCABULARY = (
    "able", "acid", "actor", "agent", "alarm", "album", "alley", "angle", "ankle", "apron",
    "arena", "aroma", "attic", "bacon", "bagel", "baker", "beard", "berry", "bison", "blade",
    "blank", "blaze", "bloom", "board", "bonus", "boots", "brain", "bread", "brick", "broom",
    "brush", "cabin", "cable", "camel", "canal", "candy", "cargo", "chair", "chalk", "charm",
    "chess", "chest", "chief", "chili", "cider", "cigar", "clock", "cloth", "coach", "cobra",
    "cocoa", "couch", "cow", "crane", "cream", "crown", "cubic", "daisy", "dance", "diary",
    "dice", "disco", "ditch", "donor", "dough", "drill", "drum", "eagle", "earth", "elbow",
    "fable", "fairy", "fence", "ferry", "fiber", "field", "flame", "flask", "flute", "fork",
    "frame", "frost", "fruit", "fudge", "ghost", "glove", "goose", "grape", "grill", "guide",
    "honey", "horse", "hotel", "house", "igloo", "ivory", "jeans", "jelly", "jewel", "juice",
    "kayak", "knife", "koala", "label", "ladder", "lemon", "lever", "linen", "llama", "lobby",
    "magic", "mango", "maple", "marsh", "medal", "melon", "metal", "miner", "motor", "mouse",
    "nail", "nest", "noble", "novel", "nurse", "oasis", "olive", "onion", "opera", "orbit",
    "organ", "owl", "paint", "panda", "paper", "party", "pasta", "peach", "pearl", "piano",
    "pilot", "pizza", "plate", "plum", "poem", "pony", "print", "prism", "pupil", "purse",
    "quilt", "radar", "radio", "raven", "razor", "robot", "rope", "salad", "salt", "scarf",
)


def make_keys(rng: random.Random, count: int) -> list[str]:
    """``count`` distinct ``adjective-noun`` keys."""
    # NOTE: a dict, not a set: set order follows string hashes, which change with PYTHONHASHSEED, so
    # the "same" seeded sample differed between processes.
    pairs: dict[str, None] = {}
    while len(pairs) < count:
        pairs[f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"] = None
    return sorted(pairs, key=lambda _: rng.random())


def make_number(rng: random.Random, digits: int = 7) -> str:
    """A random number with exactly ``digits`` digits (no leading zero)."""
    return str(rng.randrange(10 ** (digits - 1), 10**digits))
