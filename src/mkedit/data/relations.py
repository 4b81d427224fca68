"""Which relation an English zsRE-style question asks, so Specificity never probes the edited relation.

zsRE-style benchmarks (Bi-ZsRE, MzsRE) carry no relation ids, and records that share a subject mostly ask
the *same* relation in other words ("What architect designed X?" / "Who is the architect of X?"): those
are Generality cases, and an edit should change their answer. A probe may only count for Specificity when
its relation is known to differ from the edit's. This module labels a question with relation names by
keyword patterns over the wording zsRE's question templates use (written against MzsRE's English
*training* questions, never the test records). A question matching no pattern has no known relation, and
:func:`relations_differ` then answers ``False``: unknown never counts as different.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# (relation family, pattern over the lower-cased question); a question may match several families. Wikidata
# relations that zsRE's wording does not tell apart share a family (architect, manufacturer, publisher,
# producer and developer are all "maker"; cause of death and medical condition are both "health"), so a
# paraphrase is never taken for another relation.
_PATTERNS: tuple[tuple[str, str], ...] = (
    (
        "maker",
        r"\barchitect|\bdesign|\bdesigen|manufactur|\bmade\b|\bmake[rs]?\b|\bbuil[td]|\bconstruct|\bcreat"
        r"|publish|\brelease|\bdistribut|\brecord(?:ed)?\b|\blabel\b|\bproduc|\bstudio\b|\bdevelop|\bcompany"
        r"|\bbrand\b|\billustrat|\bilustrat|\bartist|\bartiste|\bpainter|\beditors?\b|\bwho worked on",
    ),
    ("director", r"\bdirect"),
    ("author", r"\bauthor|\bwrote\b|\bwritten\b|\bwriter"),
    ("performer", r"\bperform|\bstars?\b|\bstarr|\bcast\b|\bact(?:or|ress|ed)\b"),
    ("voice", r"\bvoice|\bvocal|\bsing|\bsang\b|\bsung\b|\btone\b|\brange\b|\bregister\b"),
    ("composer", r"\bcompos|\bmusic by\b"),
    (
        "family",
        r"\bfather|\bdad\b|\bmother\b|\bmom\b|\bparents?\b|\bborn to\b|\bgave birth|\bpaternal|\bmaternal"
        r"|\bsibling|\bbrother|\bsister|\bspouse|\bmarried|\bwife\b|\bhusband\b|\bchild|\bson\b|\bdaughter",
    ),
    (
        "health",
        r"\bdied\b|\bdeath\b|\bdie\b|\bkill|\bpassed away|\bdisease|\billness|\bmedical|\bcondition\b"
        r"|\bsuffer|\bcontract(?:ed)?\b|\bafflict",
    ),
    (
        "date",
        r"\bwhen\b|\byear\b|\bdate\b|\bcentury\b|\bdecade\b|\bborn\b|\bbirth|\bdiscover|\bfounded"
        r"|\bestablish|\binception|\bformed\b|\bstart(?:ed)?\b|\blaunch|\bbegan\b|\bopened\b|\bdissol|\bceased?\b"
        r"|\babolish|\bended?\b|\bdefunct|\bclosed\b|\bdemolish|\bservice\b|\bcommission|\bretired\b|\bwithdrawn\b",
    ),
    (
        "place",
        r"\bwhere\b|\blocat|\bcity\b|\btown\b|\bvillage\b|\bplace\b|\bregion\b|\bstate\b|\bprovince"
        r"|\bdistrict|\bcontinent|\bheadquarter|\bsituated|\bhome (?:ground|games|venue|stadium)|\bvenue\b|\bisland"
        r"|\bfound (?:on|in)\b|\bplanet|\bcelestial|\bastronomical|\bconstellation|\briver\b|\bflows?\b|\btributar"
        r"|\bmouth\b|\blake\b|\bsea\b|\bocean\b|\bbasin\b|\bjoin|\bmountain|\bpeak\b|\bairport|\bhub\b"
        r"|\bcountry|\bcountries|\bnation|\bcitizen",
    ),
    ("type", r"\btype\b|\bkind\b|\bsort\b|\bclass(?:ified)?\b|\bcategor|\binstance\b|\bgenre"),
    ("taxon", r"\bspecies\b|\bgenus\b|\bfamily\b|\border\b|\btaxon|\bphylum\b|\bclade\b"),
    ("conservation", r"\bconservation|\bendanger|\biucn\b|\bextinct|\becological status"),
    ("language", r"\blanguage|\blingo\b|\btongue\b"),
    (
        "occupation",
        r"\boccupation|\bprofession|\bjob\b|\bcareer|\bworks? as\b|\bposition\b|\brole\b|\boffice\b"
        r"|\brank\b|\bleader|\bin charge\b|\bhead of\b|\bchair|\bpresident|\bmayor|\bcaptain\b|\belected",
    ),
    ("employer", r"\bemploy|\bwork(?:s|ed)? (?:for|at)\b"),
    ("education", r"\beducat|\bschool\b|\buniversity|\bcollege|\bstud(?:y|ied)|\balma mater|\bgraduat"),
    ("team", r"\bteam\b|\bclub\b|\bplay(?:s|ed)? (?:for|in)\b|\bsport|\bleague|\bdivision\b|\bcompetition\b"),
    (
        "member",
        r"\bmember|\bbelong|\bpart of\b|\baffiliat|\bparty\b|\bown(?:s|ed|er)\b|\bparent company\b"
        r"|\bsubsidiary|\bseries\b|\bfranchise|\bfictional|\buniverse\b|\bwork of fiction\b|\bappear|\bcharacter",
    ),
    ("network", r"\bnetwork\b|\bchannel\b|\bbroadcast|\baired\b|\bstation\b"),
    ("war", r"\bwar\b|\bbattle|\bconflict|\bcampaign"),
    ("award", r"\baward|\bprize|\bhonou?r|\bmedal|\bnominat"),
    ("religion", r"\breligio|\bfaith\b|\bchurch\b"),
    ("gender", r"\bgender\b|\bsex\b|\bmale\b|\bfemale\b"),
    ("instrument", r"\binstrument"),
    ("named_after", r"\bnamed (?:after|for)\b|\bname comes from\b"),
    ("programming", r"\bprogramming|\bsoftware\b|\bwritten in\b|\bcoded\b|\boperating system|\bplatform"),
    ("material", r"\bmade (?:of|from)\b|\bmaterial"),
    ("crime", r"\bcrime|\bconvicted|\bprosecuted|\bcharged with"),
    ("known_for", r"\bknown for\b|\bfamous\b|\bnotable\b|\bbest known\b|\brenowned"),
)
_COMPILED: tuple[tuple[str, re.Pattern[str]], ...] = tuple((name, re.compile(p)) for name, p in _PATTERNS)
RELATION_NAMES: tuple[str, ...] = tuple(name for name, _ in _PATTERNS)


def relations_of(question: str, subject: str = "") -> frozenset[str]:
    """The relation families an English question's wording points to (empty: unknown).

    The subject is blanked first, so a subject such as "Battle of Hastings" says nothing about the
    relation asked.
    """
    text = question.lower()
    if subject:
        text = text.replace(subject.lower(), " ")
    return frozenset(name for name, pattern in _COMPILED if pattern.search(text))


def relations_differ(a: Iterable[str], b: Iterable[str]) -> bool:
    """True only when both relation sets are known and share no name."""
    first, second = frozenset(a), frozenset(b)
    return bool(first) and bool(second) and not first & second
