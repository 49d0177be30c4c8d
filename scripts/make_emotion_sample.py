"""Write src/tokenprobe/data/emotion.csv: a balanced sample of short social-media style texts
in four classes (anger, joy, optimism, sadness), composed from phrase banks written for this
project (no real posts). Deterministic: `python scripts/make_emotion_sample.py`."""

from __future__ import annotations

import csv
import random
from pathlib import Path

BANKS = {
    "anger": {
        "core": [
            "I am so angry at the landlord right now",
            "this traffic makes me furious every single morning",
            "they cancelled my order again and I am livid",
            "stop lying to customers, it is outrageous",
            "I hate waiting two hours on hold",
            "the referee ruined the whole match, disgraceful",
            "my neighbour blasted music all night, I am fuming",
            "how dare they raise the rent again",
            "the bus driver slammed the door in my face, unbelievable",
            "I am sick of people cutting the queue",
            "that customer service agent was rude and useless",
            "another parking ticket, this city is a joke",
        ],
        "tail": ["!!", "so mad", "absolutely furious", "unacceptable", "I am done with this", "rage", "ugh"],
    },
    "joy": {
        "core": [
            "we won the final and I cannot stop smiling",
            "best birthday party ever with all my friends",
            "the puppy finally came home today",
            "just got the job offer, so happy",
            "dancing in the kitchen with my kids tonight",
            "the concert was amazing and the crowd was wonderful",
            "my sister had her baby, pure delight",
            "sunny beach day with ice cream and laughter",
            "surprise visit from grandma made my week",
            "passed my driving test on the first try, yay",
            "the cake turned out perfect and everyone loved it",
            "laughing so hard at the wedding speeches",
        ],
        "tail": ["so happy", "what a day", "love it", "pure joy", "grinning", "yay", "delighted"],
    },
    "optimism": {
        "core": [
            "tomorrow is a fresh start and I believe it will go well",
            "things are slowly getting better, I can feel it",
            "every setback is a chance to grow stronger",
            "I am hopeful the new plan will work",
            "we will get through this winter together",
            "one step at a time, the future looks bright",
            "the interview went okay and I have a good feeling",
            "keep going, better days are coming",
            "I trust that hard work will pay off soon",
            "the team is improving and next season will be ours",
            "recovery is slow but I am confident",
            "new city, new chances, I expect great things",
        ],
        "tail": ["stay positive", "keep hoping", "never give up", "onwards", "fingers crossed", "believe"],
    },
    "sadness": {
        "core": [
            "I miss my dad so much today",
            "the house feels empty since she left",
            "crying again after reading old messages",
            "lost my job and I feel hopeless",
            "nobody came to my show tonight",
            "our old dog passed away this morning",
            "feeling lonely on another rainy sunday",
            "I failed the exam and feel like a failure",
            "the funeral was quiet and grey",
            "can't sleep, everything feels heavy and sad",
            "my best friend moved away and I feel lost",
            "another gloomy day, I just want to stay in bed",
        ],
        "tail": ["so sad", "heartbroken", "tears", "it hurts", "feeling down", "miserable", "sigh"],
    },
}
OPENERS = ["", "honestly", "ok so", "well", "today", "right now", "not gonna lie", "just saying", "update:", "lol"]
CONTEXT = [
    "", "", "", "at work", "after school", "this week", "on the train", "at home", "with my family",
    "in this weather", "before lunch", "on a monday",
]


def compose(rng: random.Random, label: str) -> str:
    bank = BANKS[label]
    core = rng.choice(bank["core"])
    parts = [rng.choice(OPENERS), core, rng.choice(CONTEXT)]
    text = " ".join(p for p in parts if p)
    if rng.random() < 0.6:
        text += rng.choice([", ", ". ", " - "]) + rng.choice(bank["tail"])
    if rng.random() < 0.3:
        other = rng.choice([c for c in bank["core"] if c != core])
        text += ". " + other
    text = text[0].upper() + text[1:]
    return text + rng.choice(["", ".", "!", " #mood", " :)" if label in ("joy", "optimism") else " :("])


def main() -> None:
    rng = random.Random(20261121)
    rows = []
    for label in BANKS:
        seen: set[str] = set()
        while len(seen) < 110:
            seen.add(compose(rng, label))
        rows += [(t, label) for t in sorted(seen)]
    rng.shuffle(rows)
    out = Path(__file__).resolve().parents[1] / "src" / "tokenprobe" / "data" / "emotion.csv"
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
