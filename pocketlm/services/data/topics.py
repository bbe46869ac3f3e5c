"""The built-in seeds of `pocketlm data synth`: topics (when no ``--topics`` file is given),
audiences and formats for textbook data, and styles that vary a task's examples.

Crossing topics with audiences and formats is how Cosmopedia (Hugging Face, 2024) made 30
million varied files from far fewer seeds: the same topic written for a child and for a
researcher, as a textbook section and as a worked exercise, gives different text.
"""

from __future__ import annotations

TOPICS = (
    "photosynthesis",
    "the water cycle",
    "plate tectonics",
    "how vaccines work",
    "the structure of the atom",
    "Newton's laws of motion",
    "electric circuits",
    "natural selection",
    "the causes of the First World War",
    "the printing press and its effects",
    "supply and demand",
    "compound interest",
    "probability with dice and cards",
    "the Pythagorean theorem",
    "derivatives in calculus",
    "prime numbers",
    "binary numbers",
    "how a hash table works",
    "recursion in programming",
    "sorting algorithms",
    "reading and writing files in Python",
    "how the internet routes packets",
    "public-key cryptography",
    "unit testing",
    "SQL joins",
    "the human immune system",
    "climate and weather",
    "writing a persuasive essay",
    "budgeting a household",
    "first aid for burns and cuts",
)

AUDIENCES = (
    "young children",
    "high school students",
    "college students",
    "complete beginners",
    "professionals in the field",
    "researchers",
)

# format -> what to write (Cosmopedia's and phi-1's kinds of text)
FORMATS = {
    "textbook section": (
        "a section of a textbook: a heading, then the concept developed step by step "
        "with definitions and concrete examples"
    ),
    "blog post": "an engaging blog post that explains the idea with everyday examples",
    "tutorial": "a step-by-step tutorial the reader can follow",
    "exercise with a worked solution": (
        "one exercise on the topic, then its solution worked out step by step"
    ),
    "lecture notes": "clear lecture notes with the key points and an example for each",
    "FAQ": "a list of frequently asked questions with clear answers",
    "story": "a short story in which the characters meet and explain the idea",
    "dialogue": "a dialogue in which a student asks a teacher about the idea",
}

# what varies between the examples written for a task (seeded choice per record)
STYLES = (
    "short: one or two sentences",
    "a few sentences with specific details",
    "casual, as people really write",
    "formal and polite",
    "terse, with a small typo",
    "longer: a full paragraph",
)
