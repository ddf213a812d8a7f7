"""The real-model world's word lists: facts with known answers, topics for open requests, and the wording
of every instruction (the judge parses exactly these wordings back out of a prompt).

Facts are ones a 135 M-parameter chat model half knows (it answers about a quarter of them right before
alignment), so the judge's content check separates replies.
"""

from __future__ import annotations

# country -> capital; "What is the capital of X?"
CAPITALS = {
    "France": "Paris",
    "Italy": "Rome",
    "Japan": "Tokyo",
    "Germany": "Berlin",
    "Spain": "Madrid",
    "England": "London",
    "Russia": "Moscow",
    "China": "Beijing",
    "Egypt": "Cairo",
    "Greece": "Athens",
    "Canada": "Ottawa",
    "Ireland": "Dublin",
    "Portugal": "Lisbon",
    "Norway": "Oslo",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Australia": "Canberra",
    "Austria": "Vienna",
    "Sweden": "Stockholm",
    "Poland": "Warsaw",
    "Thailand": "Bangkok",
    "Turkey": "Ankara",
    "Cuba": "Havana",
    "Argentina": "Buenos Aires",
}
CAPITAL_TEMPLATES = (
    "What is the capital of {x}?",
    "Which city is the capital of {x}?",
    "Name the capital city of {x}.",
)

# question -> (answer, group): answers of one group exclude each other (a reply naming two is hedging)
FACTS: dict[str, tuple[str, str]] = {
    "How many legs does a spider have?": ("8", "number"),
    "How many days are in a week?": ("7", "number"),
    "How many continents are there on Earth?": ("7", "number"),
    "How many hours are in a day?": ("24", "number"),
    "How many months are in a year?": ("12", "number"),
    "How many sides does a triangle have?": ("3", "number"),
    "How many legs does a dog have?": ("4", "number"),
    "At what temperature in degrees Celsius does water freeze?": ("0", "number"),
    "At what temperature in degrees Celsius does water boil?": ("100", "number"),
    "What is the largest planet in the solar system?": ("Jupiter", "planet"),
    "Which planet is known as the Red Planet?": ("Mars", "planet"),
    "Which planet do we live on?": ("Earth", "planet"),
    "What color is the sky on a clear day?": ("blue", "color"),
    "What color is fresh grass?": ("green", "color"),
    "What color is snow?": ("white", "color"),
    "What is the largest ocean on Earth?": ("Pacific", "ocean"),
    "What do bees make?": ("honey", "thing"),
    "What is frozen water called?": ("ice", "thing"),
    "Which animal is known as the king of the jungle?": ("lion", "animal"),
    "What is the tallest animal in the world?": ("giraffe", "animal"),
    "Which animal says moo?": ("cow", "animal"),
    "What gas do people need to breathe?": ("oxygen", "gas"),
    "Who wrote Romeo and Juliet?": ("Shakespeare", "person"),
    "What is the star at the center of our solar system called?": ("Sun", "thing"),
    "What language is spoken in Brazil?": ("Portuguese", "language"),
    "What is the opposite of hot?": ("cold", "thing"),
}
HEDGE_GROUPS = ("capital", "planet")
"""Groups whose other answers in a reply count as hedging (a reply naming two capitals is not an answer)."""
NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty"
).split()
TENS = {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
NUMBER_VALUES = {**{w: i for i, w in enumerate(NUMBER_WORDS)}, **TENS, "hundred": 100}

# arithmetic: operator symbol -> (words that may name it, function)
OPERATORS = {"+": ("plus", "+"), "-": ("minus", "-"), "*": ("times", "*")}
ARITH_TEMPLATES = ("What is {a} {op} {b}?", "Compute {a} {op} {b}.", "How much is {a} {op} {b}?")

# open requests: topic phrase -> (words that show a reply is on topic, a word to include, a word to avoid)
TOPICS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "the ocean": (("ocean", "sea", "water", "wave", "fish", "beach", "tide"), "blue", "water"),
    "cats": (("cat", "kitten", "pet", "fur", "purr", "feline", "whisker"), "soft", "pet"),
    "dogs": (("dog", "puppy", "pet", "bark", "loyal", "canine", "tail"), "friend", "pet"),
    "the moon": (("moon", "lunar", "night", "sky", "orbit", "crater"), "night", "sky"),
    "coffee": (("coffee", "cup", "bean", "drink", "caffeine", "morning"), "morning", "cup"),
    "rain": (("rain", "water", "cloud", "storm", "wet", "umbrella", "drop"), "cloud", "water"),
    "winter": (("winter", "snow", "cold", "ice", "season", "december"), "snow", "cold"),
    "forests": (("forest", "tree", "wood", "leaf", "leaves", "animal", "green"), "green", "tree"),
    "music": (("music", "song", "sound", "melody", "sing", "instrument", "rhythm"), "song", "sound"),
    "the sun": (("sun", "light", "star", "warm", "heat", "sky", "day"), "light", "star"),
    "bicycles": (("bicycle", "bike", "ride", "wheel", "pedal", "cycling"), "ride", "wheel"),
    "apples": (("apple", "fruit", "red", "tree", "sweet", "eat"), "sweet", "fruit"),
    "books": (("book", "read", "page", "story", "author", "library"), "story", "read"),
    "gardening": (("garden", "plant", "flower", "soil", "grow", "seed", "water"), "soil", "plant"),
    "sleep": (("sleep", "rest", "bed", "night", "tired", "dream"), "bed", "night"),
    "exercise": (("exercise", "health", "body", "run", "walk", "muscle", "fit"), "health", "body"),
}
OPEN_TEMPLATES = (
    "Describe {x}.",
    "Write a short note about {x}.",
    "Give me one tip about {x}.",
    "Tell me something about {x}.",
)
SENTENCE_LIMITS = {1: "one sentence", 2: "at most two sentences"}
JSON_KEYS = (("name", "color"), ("topic", "fact"), ("title", "summary"), ("subject", "detail"))

# Instruction wordings, one per kind (the judge's parser reads exactly these).
INSTRUCTIONS = {
    "max_words": "Answer in at most {n} words.",
    "max_sentences": "Answer in {n}.",  # n: "one sentence" | "at most two sentences" (SENTENCE_LIMITS)
    "lowercase": "Write only in lowercase letters, with no capitals.",
    "no_commas": "Do not use any commas.",
    "one_word": "Answer with one word only, nothing else.",
    "number_only": "Reply with the number only, no words.",
    "end_question": "End your reply with a question.",
    "include_word": 'Include the word "{w}".',
    "avoid_word": 'Do not use the word "{w}".',
    "json_keys": 'Reply in JSON with the keys "{a}" and "{b}".',
}
