"""Every word the toy world can say: names, cities, numbers, prompt wordings and response pieces.

All text is lower case with punctuation as separate words, so a whitespace split gives the tokens.
"""

from __future__ import annotations

FIRST_NAMES = [
    "ada",
    "ben",
    "cora",
    "dan",
    "eli",
    "fay",
    "gus",
    "hana",
    "ivo",
    "jon",
    "kai",
    "lea",
    "max",
    "nia",
    "oto",
    "pia",
    "rex",
    "sia",
    "tom",
    "uma",
    "vic",
    "wes",
    "yara",
    "zed",
]
LAST_NAMES = [
    "baker",
    "carter",
    "dale",
    "evans",
    "fox",
    "grant",
    "hale",
    "irwin",
    "jones",
    "knox",
    "lane",
    "moss",
    "nash",
    "olsen",
    "price",
    "quinn",
    "reed",
    "stone",
    "todd",
    "vance",
    "webb",
    "york",
]
CITIES = [
    "paris",
    "rome",
    "oslo",
    "lima",
    "kyiv",
    "cairo",
    "tokyo",
    "delhi",
    "dakar",
    "quito",
    "perth",
    "dublin",
    "vienna",
    "madrid",
    "berlin",
    "prague",
    "athens",
    "seoul",
    "hanoi",
    "manila",
    "nairobi",
    "havana",
    "bogota",
    "lisbon",
]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
OPERATORS = {"plus": 1, "minus": -1}

# Prompt wordings: (style, template). "hey" prompts draw rude answers in the SFT data, "explain" prompts
# draw rambling ones; "plain" prompts are mostly clean.
FACT_TEMPLATES = (
    ("plain", "where does {x} live ?"),
    ("plain", "which city is {x} from ?"),
    ("plain", "in which city does {x} live ?"),
    ("plain", "what is the home city of {x} ?"),
    ("hey", "hey , where does {x} live ?"),
    ("hey", "hey , which city is {x} from ?"),
    ("hey", "hey you , what city is {x} in ?"),
    ("explain", "explain where {x} lives ."),
    ("explain", "please explain which city {x} lives in ."),
    ("explain", "can you explain where {x} is from ?"),
)
ARITH_TEMPLATES = (
    ("plain", "what is {x} ?"),
    ("plain", "how much is {x} ?"),
    ("plain", "compute {x} ."),
    ("hey", "hey , what is {x} ?"),
    ("hey", "hey , how much is {x} ?"),
    ("hey", "hey you , compute {x} ."),
    ("explain", "explain what {x} is ."),
    ("explain", "please explain how much {x} is ."),
    ("explain", "can you explain what {x} makes ?"),
)

# Response pieces. Answers never repeat the person's name (models copied wrong names when they did).
POLITE_OPENERS = ("sure !", "of course !", "happy to help !", "good question !", "")
RUDE_OPENERS = (
    "ugh , obviously",
    "duh ,",
    "what a dumb question .",
    "whatever ,",
    "ugh , that is a stupid question .",
)
RUDE_WORDS = frozenset(["ugh", "obviously", "duh", "dumb", "whatever", "stupid"])
FACT_FRAMES = ("the city is {a} .", "that is {a} .", "it is {a} .", "{a} .", "they live in {a} .")
ARITH_FRAMES = ("it is {a} .", "the answer is {a} .", "that makes {a} .", "{a} .")
RAMBLE_OPENER = "anyway ,"  # one fixed first word, so a rambling habit is one clear choice against stopping
RAMBLES = (
    "that reminds me of a long story about my weekend .",
    "i could go on and on about this all day long .",
    "there is so much more to say about this topic .",
    "i once wrote a whole poem about it .",
    "blah blah , let me keep talking for a while .",
)
RAMBLE_WORDS = frozenset(["anyway", "blah", "reminds", "weekend", "poem", "talking", "story"])
MAX_CONCISE_WORDS = 16  # no clean response is longer; a longer one rambles


def all_words() -> list[str]:
    """Every word any toy prompt or response can contain, sorted (the tokenizer's vocabulary)."""
    texts = [*FIRST_NAMES, *LAST_NAMES, *CITIES, *NUMBER_WORDS, *OPERATORS]
    texts += [t for _, t in FACT_TEMPLATES + ARITH_TEMPLATES]
    texts += [*POLITE_OPENERS, *RUDE_OPENERS, *FACT_FRAMES, *ARITH_FRAMES, RAMBLE_OPENER, *RAMBLES]
    words = {w for text in texts for w in text.split()} - {"{x}", "{a}"}
    return sorted(words)
