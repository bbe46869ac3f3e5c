"""Pattern recognizers that Presidio does not ship: API keys and tokens, URLs with
credentials, dates of birth, street addresses and organisations.

Each is a ``Rule`` (entity type, regex, score, the group that is the value, an optional
check) run by ``RegexRecognizer``, a Presidio ``EntityRecognizer``. Every repetition in
these patterns has an upper bound, and no two adjacent parts can match the same text, so a
hostile input cannot make them backtrack for long (tests/services/privacy/test_detect.py
times them on such inputs).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from presidio_analyzer import EntityRecognizer, RecognizerResult


@dataclass(frozen=True)
class Rule:
    entity: str
    pattern: re.Pattern
    score: float
    group: int | str = 0  # the part of the match that is the value
    check: Callable[[re.Match], bool] | None = None  # False: not this entity after all


class RegexRecognizer(EntityRecognizer):
    """Presidio recognizer over ``rules``; its scores already include the context it reads."""

    def __init__(self, name: str, rules: list[Rule]):
        self.rules = rules
        entities = sorted({rule.entity for rule in rules})
        super().__init__(supported_entities=entities, name=name, supported_language="en")

    def load(self) -> None:  # nothing to load: the patterns are compiled at import
        pass

    def analyze(self, text, entities, nlp_artifacts=None) -> list[RecognizerResult]:
        found = []
        for rule in self.rules:
            if rule.entity not in entities:
                continue
            for m in rule.pattern.finditer(text):
                start, end = m.span(rule.group)
                if end > start and (rule.check is None or rule.check(m)):
                    found.append(self.result(rule.entity, start, end, rule.score))
        return found

    def result(self, entity: str, start: int, end: int, score: float) -> RecognizerResult:
        """A result marked as context-scored, so Presidio's enhancer leaves its score alone."""
        meta = {
            RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
            RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
            RecognizerResult.IS_SCORE_ENHANCED_BY_CONTEXT_KEY: True,
        }
        return RecognizerResult(entity, start, end, score, recognition_metadata=meta)


# --- secrets ---------------------------------------------------------------------------

_TOKEN_END = r"(?![\w-])"
_SECRET_NAMES = (
    r"password|passwd|passphrase|pwd|pass|token|access[_-]?token|auth[_-]?token|secret"
    r"|client[_-]?secret|secret[_-]?key|api[_-]?key|apikey|access[_-]?key|private[_-]?key"
    r"|aws_secret_access_key|credentials?"
)
SECRET_RULES = [
    Rule("API_KEY", re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b"), 0.95),
    Rule("API_KEY", re.compile(r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,255}\b"), 0.95),
    Rule("API_KEY", re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b"), 0.95),
    Rule("API_KEY", re.compile(r"\bglpat-[A-Za-z0-9_-]{20,64}" + _TOKEN_END), 0.95),
    Rule("API_KEY", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,250}" + _TOKEN_END), 0.95),
    Rule("API_KEY", re.compile(r"\bsk-[A-Za-z0-9_-]{20,250}" + _TOKEN_END), 0.9),
    Rule("API_KEY", re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,250}\b"), 0.95),
    Rule("API_KEY", re.compile(r"\bAIza[0-9A-Za-z_-]{35}" + _TOKEN_END), 0.95),
    Rule("API_KEY", re.compile(r"\bhf_[A-Za-z0-9]{30,64}\b"), 0.9),
    Rule(
        "API_KEY",
        re.compile(r"\beyJ[A-Za-z0-9_-]{5,4000}\.eyJ[A-Za-z0-9_-]{2,8000}\.[A-Za-z0-9_-]{0,4000}"),
        0.95,
    ),
    Rule(
        "API_KEY",
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]{1,20} ){0,3}PRIVATE KEY( BLOCK)?-----"
            r"[A-Za-z0-9+/=\s:,-]{1,16000}?"
            r"-----END (?:[A-Z0-9]{1,20} ){0,3}PRIVATE KEY( BLOCK)?-----"
        ),
        1.0,
    ),
    # password=..., "token": "...", API_KEY: ... (the value alone is the secret)
    Rule(
        "API_KEY",
        re.compile(
            rf"(?i)\b(?:[a-z0-9]{{1,20}}[_-])?(?:{_SECRET_NAMES})[\"']?\s{{0,3}}(?:=|:|=>)\s{{0,3}}"
            r"[\"']?(?P<value>[^\s\"',;&<>]{3,399}[^\s\"',;&<>.])"
        ),
        0.9,
        group="value",
        check=lambda m: not _placeholder_like(m.group("value")),
    ),
]


_NOT_SECRET = re.compile(r"(?i)<[^>]*>|\$\{?\w+\}?|\{\{.*\}\}|%\(?\w*\)?s|\*+|none|null")


def _placeholder_like(value: str) -> bool:
    """A value that is no secret: a template variable or a redacted one (``<...>``, ``***``)."""
    return bool(_NOT_SECRET.fullmatch(value))


URL_RULES = [
    # scheme://user:password@host[:port][/path]: the whole URL, trailing punctuation left out
    Rule(
        "URL_CREDENTIALS",
        re.compile(
            r"\b[A-Za-z][A-Za-z0-9+.-]{1,20}://[^\s:/@<>\"']{1,128}:[^\s/@<>\"']{1,256}@"
            r"[A-Za-z0-9.\[\]:-]{1,260}(?:[/?#][^\s<>\"']{0,2000}(?<![.,;:!?)\]]))?"
        ),
        1.0,
    ),
]

# North American numbers with an extension ("+1-632-288-7813x89401"), which libphonenumber
# does not match when the area code is unallocated
PHONE_RULES = [
    Rule(
        "PHONE_NUMBER",
        re.compile(
            r"(?<![\w+-])(?:\+1[-. ]?|001-)?(?:\(\d{3}\) ?|\d{3}[-.])\d{3}[-.]\d{4}"
            r"(?:[ ]?(?:x|ext\.?) ?\d{1,6})?(?![\w-])"
        ),
        0.6,
    ),
]

# --- dates of birth ------------------------------------------------------------------------

_MONTHS = (
    r"Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
    r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?"
    r"|Januar|Februar|März|Mai|Juni|Juli|Oktober|Dezember"
    r"|janvier|février|mars|avril|mai|juin|juillet|août|septembre|octobre|novembre|décembre"
    r"|enero|febrero|marzo|abril|mayo|junio|julio|agosto|septiembre|octubre|noviembre|diciembre"
    r"|gennaio|febbraio|aprile|maggio|giugno|luglio|settembre|ottobre|dicembre"
)
_DAY = r"(?:[0-2]?\d|3[01])(?:st|nd|rd|th|\.)?"
_DATE = (
    rf"(?:\d{{4}}[-/.](?:0?[1-9]|1[0-2])[-/.]{_DAY}"
    rf"|{_DAY}[-/.](?:0?[1-9]|1[0-2])[-/.](?:\d{{4}}|\d\d)"
    rf"|(?:0?[1-9]|1[0-2])[-/.]{_DAY}[-/.](?:\d{{4}}|\d\d)"
    rf"|{_DAY}\s(?:of\s|de\s)?(?:{_MONTHS})\.?,?\s(?:de\s)?\d{{4}}"
    rf"|(?:{_MONTHS})\.?\s{_DAY},?\s\d{{4}})"
)
_BIRTH = (
    r"born(?:\s(?:on|in))?|birth\s?date|date\sof\sbirth|d\.?o\.?b\.?|birthday|b\.|"
    r"geboren(?:\sam)?|geburtsdatum|né(?:e)?\sle|date\sde\snaissance|fecha\sde\snacimiento"
    r"|nacid[oa]\sel|data\sdi\snascita|nat[oa]\sil|geboortedatum|geboren\sop"
)
DOB_RULES = [
    Rule(
        "DATE_OF_BIRTH",
        re.compile(
            rf"(?i)\b(?:{_BIRTH})(?:\s?(?:is|was|:|-|=|,)){{0,2}}\s{{0,3}}[\"']?(?P<date>{_DATE})(?!\d)"
        ),
        0.9,
        group="date",
    ),
    # the cue further away: a CSV header ("name,dob,ssn"), "birthday of Ann Smith: ..."
    Rule(
        "DATE_OF_BIRTH",
        re.compile(rf"(?is)\b(?:{_BIRTH})\b.{{1,80}}?(?<![\d./-])(?P<date>{_DATE})(?!\d)"),
        0.9,
        group="date",
    ),
    # "1985-03-12 (DOB)", "12/03/1985, birthday"
    Rule(
        "DATE_OF_BIRTH",
        re.compile(rf"(?i)(?<!\d)(?P<date>{_DATE})[\s,(]{{1,3}}(?:dob|d\.o\.b\.|birthday)\b"),
        0.85,
        group="date",
    ),
]

# --- street addresses ------------------------------------------------------------------------

_CAP = r"[A-ZÀ-ÖØ-Þ][\w'’.-]{0,30}"  # a capitalised word
_WORD = r"[A-Za-zÀ-ÖØ-öø-ÿ][\w'’.-]{0,30}"
# street types that follow the name (USPS abbreviations and the common British ones)
_SUFFIXES = (
    r"Street|St|Avenue|Ave|Av|Road|Rd|Lane|Ln|Boulevard|Blvd|Drive|Dr|Court|Ct|Place|Pl"
    r"|Square|Sq|Terrace|Ter|Way|Parkway|Pkwy|Highway|Hwy|Circle|Cir|Crescent|Cres|Close"
    r"|Grove|Gardens|Gdns|Row|Mews|Walk|Hill|Rise|Green|Park|Parade|Trail|Trl|Alley|Path"
    r"|Pike|Plaza|Loop|Run|Bend|Crossing|Xing|Ridge|Heights|Hts|Village|Vlg|Mission|Shoals?"
    r"|Haven|Harbor|Harbour|Point|Pt|Port|Springs?|Station|Landing|Meadows?|Estates?|View"
    r"|Valley|Vista|Well|Wells|Manor|Mill|Mills|Center|Centre|Centers|Fields?|Forges?|Light"
    r"|Lights|Roads|Streets|Ways|Courts|Shore|Shores|Brooks?|Creek|Falls|Ferry|Ford|Forest"
    r"|Fork|Gateway|Glen|Island|Junction|Knolls?|Lake|Lakes|Locks?|Lodge|Motorway|Oval|Pass"
    r"|Pines|Plains?|Ports|Prairie|Radial|Ranch|Rapids?|Rest|Route|Skyway|Spur|Stravenue"
    r"|Stream|Summit|Throughway|Trace|Track|Tunnel|Turnpike|Union|Unions|Via|Viaduct|Ville"
    r"|Wall|Expressway|Expy|Freeway|Fwy|Camp|Canyon|Cape|Causeway|Cliffs?|Club|Common|Corner"
    r"|Corners|Cove|Crest|Curve|Dale|Dam|Divide|Extension|Flats?|Fort|Garden|Harbors|Hills"
    r"|Hollow|Inlet|Isle|Keys?|Lane|Manors|Neck|Orchard|Overpass|Squares|Underpass|Views"
)
_UNIT = r"(?:,? (?:Apt\.?|Apartment|Suite|Ste\.?|Unit|Flat|Floor|Fl\.?|Room|#) ?\w{1,6})?"
# street types that come first (French, Italian, Spanish, Catalan, Portuguese, English)
_PREFIXES = (
    r"rue|avenue|av\.|boulevard|bd|chemin|impasse|allée|place|quai|route|cours|passage|square"
    r"|via|viale|piazza|piazzale|corso|vicolo|largo|strada|contrada|borgo|rotonda|stretto"
    r"|calle|c/|avenida|avda\.?|paseo|plaza|camino|carrer|ronda|travesía|cuesta|cañada"
    r"|glorieta|pasaje|rambla|carretera|urbanización|vía|callejón|acceso|alameda|rua"
)
_PARTICLE = r"(?:(?:de|del|de\sla|des|du|d'|della|dei|delle|di|da|do|dos|das|la|le|les|l')\s?)"
# German and Dutch compounds: "Hauptstraße 5", "Lindenweg 12a", "Keizersgracht 123-2"
_COMPOUND = (
    r"straße|strasse|str\.|gasse|weg|allee|platz|ring|damm|ufer|chaussee|steig|pfad|markt"
    r"|straat|laan|plein|gracht|kade|singel|dijk|steeg|hof|pad|dreef|park|baan|wal|veld"
)
_HOUSE = r"\d{1,5}[a-zA-Z]?(?:\s?[-/]\s?\d{1,5}[a-zA-Z]?)?"
_US_STATES = (
    "AL AK AZ AR CA CO CT DE FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ "
    "NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY DC AS GU MP PR VI UM FM MH PW "
    "AA AE AP"
).split()

ADDRESS_RULES = [
    # "7631 Johnson Village Suite 690", "12 High Street", "4 Jones light"
    Rule(
        "ADDRESS",
        re.compile(
            rf"\b{_HOUSE},? (?:{_CAP} ){{0,3}}{_WORD} (?i:{_SUFFIXES})\b\.?{_UNIT}"
            rf"|\b{_HOUSE},? (?:{_CAP} ){{0,3}}{_CAP} (?:{_SUFFIXES})\b\.?{_UNIT}"
        ),
        0.75,
    ),
    # "Flat 7\nJones Light", "Studio 35, Sian Forges": a unit line, then a street line
    Rule(
        "ADDRESS",
        re.compile(
            rf"\b(?:Flat|Studio|Apartment|Apt\.?|Unit|Suite)\s\d{{1,5}}[A-Z]?[,\n]\s?"
            rf"(?:{_CAP}\s){{0,3}}{_WORD}\s(?i:{_SUFFIXES})\b"
        ),
        0.8,
    ),
    # "8, avenue Manon Gillet", "Via Roma 12", "Calle de Juan 12", "rue de Barre"
    Rule(
        "ADDRESS",
        re.compile(
            rf"(?:\b{_HOUSE},? )?\b(?i:{_PREFIXES}) {_PARTICLE}?(?:{_CAP} ?){{1,4}}"
            rf"(?:,? ?{_HOUSE}\b)?{_UNIT}"
        ),
        0.6,
        check=lambda m: bool(re.search(r"\d", m.group())) or m.group()[0].islower(),
    ),
    Rule(
        "ADDRESS",
        re.compile(
            rf"\b(?:{_CAP}[-\s])?[A-ZÀ-Þ][\w'’-]{{0,40}}(?i:{_COMPOUND})\s{_HOUSE}\b"
            rf"|\b(?:{_CAP}\s){{1,2}}(?:Straße|Strasse|Str\.|Weg|Allee|Platz|Gasse|Ring|Straat"
            rf"|Laan|Weg|Plein)\s{_HOUSE}\b"
        ),
        0.75,
    ),
    Rule(
        "ADDRESS",
        re.compile(
            r"(?i)\b(?:P\.?\s?O\.?\s?Box|Post\sOffice\sBox|Postfach|Apartado(?:\sde\scorreos)?"
            r"|Casella\spostale|Boîte\spostale|BP|Postbus)\s?\d{1,8}\b"
        ),
        0.85,
    ),
    # "Adamsbury, OR 13900" (a US state code checked)
    Rule(
        "ADDRESS",
        re.compile(
            rf"\b(?:{_CAP}\s){{0,3}}{_CAP},?\s(?P<state>[A-Z]{{2}})\s\d{{5}}(?:-\d{{4}})?\b"
        ),
        0.8,
        check=lambda m: m.group("state") in _US_STATES,
    ),
    # British postcodes: "SW1A 1AA", "WC81 4EP"
    Rule("ADDRESS", re.compile(r"\b[A-Z]{1,2}\d[A-Z\d]?\s?\d[ABD-HJLNP-UW-Z]{2}\b"), 0.6),
    # continental postcode + town on its own line or after a comma: "66907 Werdau",
    # "44019, Montesanto (FE)", "7170BM", "75001 Paris"
    Rule(
        "ADDRESS",
        re.compile(
            rf"(?m)(?:^|(?<=,\s)|(?<=\n))(?:[A-Z]{{1,2}}-)?(?:\d{{5}}|\d{{4}}\s?[A-Z]{{2}})"
            rf"(?:,?\s{_CAP}(?:[\s-]{_WORD}){{0,3}}(?:\s\([A-Z]{{2}}\))?)?(?=$|[\s,.;])"
        ),
        0.6,
        check=lambda m: not m.group().isdigit(),
    ),
    # "Tarragona, 30188" at the end of an address
    Rule("ADDRESS", re.compile(rf"(?m)\b{_CAP}(?:\s{_CAP}){{0,3}},\s\d{{5}}$"), 0.55),
]

# --- organisations ---------------------------------------------------------------------------

_NAMEWORD = r"[A-ZÀ-Þ0-9][\w'’&]{0,30}"  # no "-" or ".": _JOIN has them
_JOIN = r"(?:,?\s(?:and|&|und|et|y|e|en|of|de|del|di|van|von|der|the|for)\s|,\s|\s|-)"
_LEGAL = (
    r"Inc\.?|Incorporated|Corp\.?|Corporation|Co\.|Ltd\.?|Limited|LLC|L\.L\.C\.?|LLP|L\.P\.|LP"
    r"|PLC|plc|GmbH|gGmbH|mbH|AG|KG|KGaA|OHG|GbR|e\.V\.|SE|S\.A\.S\.?|S\.A\.|SA|SAS|SARL"
    r"|S\.A\.R\.L\.?|S\.L\.L\.?|S\.L\.N\.E\.?|S\.L\.|SL|S\.Coop\.?|S\.Com\.?|S\.C\.|SpA|SPA|S\.p\.A\.?"
    r"|S\.r\.l\.?|s\.r\.l\.?|Srl|SRL|s\.n\.c\.?|S\.n\.c\.?|B\.V\.?|BV|N\.V\.?|NV|V\.O\.F\.?|VOF|C\.V\.?"
    r"|Pty\.?\sLtd\.?|Pty|Oy|Oyj|AB|ASA|A/S|ApS|Sp\.\sz\so\.o\.|Group|Groep|Gruppe|Grupo|Gruppo"
    r"|Holding|Holdings|Bank|Hospital|Clinic|Foundation|Stiftung|Partners|Associates|Industries"
    r"|Technologies|Solutions|Consulting|Labs|Systems|Enterprises|Ventures|Capital|Insurance"
    r"|and\sSons|&\sSons|&\sCo\.?|e\sfigli|et\sFils|e\sHijos|y\sasociados|Stiftung\s&\sCo\.\sKG"
    r"|&\sCo\.\sKG|&\sCo\.\sOHG|&\sCo\.\sKGaA"
)
_ORG_NAME = rf"{_NAMEWORD}(?:{_JOIN}{_NAMEWORD}){{0,5}}"
_INSTITUTION = (
    r"University|Universidad|Università|Université|Universität|Universiteit|Bank|Banco|Banque"
    r"|Banca|Hospital|Institute|Instituto|Istituto|Institut|College|Ministry|Department|Council"
)
_ORG_CUES = (
    r"work(?:s|ed|ing)?\s(?:at|for)|employed\s(?:at|by)|employer|company|organi[sz]ation|client"
    r"|vendor|supplier|customer\sof|joined|on\sbehalf\sof|subsidiary\sof|acquired\sby"
    r"|invoice\sfrom|contract\swith|agreement\swith|partnered\swith|insurer|insured\swith|firm|arbeitet\sbei|Firma|travaille\schez|société|trabaja\sen|empresa"
    r"|lavora\spresso|azienda|werkt\sbij|bedrijf"
)

ORG_RULES = [
    Rule(
        "ORGANIZATION",
        re.compile(
            rf"(?<![\w=@#%/:.-]){_ORG_NAME}(?:,?\s|-)(?:{_LEGAL})(?:\s(?:{_LEGAL}))?(?![\w-])"
        ),
        0.75,
    ),
    Rule(
        "ORGANIZATION",
        re.compile(
            rf"\b(?:{_INSTITUTION})\s(?:of|de|di|du|for|der|des|del|van)\s(?:the\s|la\s)?"
            rf"{_CAP}(?:\s(?:{_CAP}|and|&)){{0,3}}"
            rf"|\b(?:{_CAP}\s){{1,3}}(?:{_INSTITUTION})\b"
        ),
        0.7,
    ),
    # "Waters, Harris and Herring" (a firm of partners)
    Rule(
        "ORGANIZATION",
        re.compile(r"\b[A-Z][a-z'’]{1,30}, [A-Z][a-z'’]{1,30},? (?:and|&) [A-Z][a-z'’]{1,30}\b"),
        0.55,
    ),
    Rule(
        "ORGANIZATION",
        re.compile(
            rf"(?i:\b(?:{_ORG_CUES}))(?: ?[:=-])?[ \t]{{1,3}}(?P<org>(?=[^\W\d_]){_ORG_NAME})"
        ),
        0.6,
        group="org",
    ),
]
