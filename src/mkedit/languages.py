"""Language codes, their aliases, and the per-language text templates the edit objective needs.

The templates are the only language-specific knowledge in the method: the "{subject} is a" prompt of
the KL term (Eq. 9), the seed words from which random prefixes are sampled (Eq. 8), and how a prompt
and its answer are joined.
"""

from __future__ import annotations

from dataclasses import dataclass

from mkedit.errors import UnknownLanguageError


@dataclass(frozen=True)
class Language:
    """What mkedit needs to know about one language."""

    code: str
    name: str
    kl_template: str  # "{s} is a" in this language (Eq. 9)
    prefix_seeds: tuple[str, ...]  # first words of the sampled random prefixes (Eq. 8)
    uses_spaces: bool = True  # False for scripts written without spaces between words

    @property
    def word_sep(self) -> str:
        """Separator between a prompt and its answer."""
        return " " if self.uses_spaces else ""

    @property
    def sentence_sep(self) -> str:
        """Separator between a random prefix and the question."""
        return ". " if self.uses_spaces else "。"


_LANGUAGES: tuple[Language, ...] = (
    Language("en", "English", "{s} is a", ("The", "Therefore", "Because", "I", "You")),
    Language("zh", "Chinese", "{s}是", ("这", "因此", "因为", "我", "你"), uses_spaces=False),
    Language("cs", "Czech", "{s} je", ("To", "Proto", "Protože", "Já", "Ty")),
    Language("de", "German", "{s} ist ein", ("Die", "Deshalb", "Weil", "Ich", "Du")),
    Language("nl", "Dutch", "{s} is een", ("De", "Daarom", "Omdat", "Ik", "Jij")),
    Language("es", "Spanish", "{s} es un", ("El", "Por lo tanto", "Porque", "Yo", "Tú")),
    Language("fr", "French", "{s} est un", ("Le", "Donc", "Parce que", "Je", "Tu")),
    Language("pt", "Portuguese", "{s} é um", ("O", "Portanto", "Porque", "Eu", "Você")),
    Language("ru", "Russian", "{s} — это", ("Это", "Поэтому", "Потому что", "Я", "Ты")),
    Language("th", "Thai", "{s} คือ", ("นี่", "ดังนั้น", "เพราะ", "ฉัน", "คุณ"), uses_spaces=False),
    Language("tr", "Turkish", "{s} bir", ("Bu", "Bu yüzden", "Çünkü", "Ben", "Sen")),
    Language("vi", "Vietnamese", "{s} là một", ("Đây", "Vì vậy", "Bởi vì", "Tôi", "Bạn")),
    Language("ja", "Japanese", "{s}は", ("これ", "だから", "なぜなら", "私", "あなた"), uses_spaces=False),
    Language("ko", "Korean", "{s}은", ("이", "그래서", "왜냐하면", "나는", "너는")),
    Language("it", "Italian", "{s} è un", ("Il", "Quindi", "Perché", "Io", "Tu")),
    Language("ar", "Arabic", "{s} هو", ("هذا", "لذلك", "لأن", "أنا", "أنت")),
)

_BY_CODE = {lang.code: lang for lang in _LANGUAGES}

# Codes used by the benchmark files that differ from ISO 639-1.
ALIASES: dict[str, str] = {"cz": "cs", "du": "nl", "zh-cn": "zh", "zh_cn": "zh", "cn": "zh"}


def normalize_code(code: str) -> str:
    """Map a user or data-file language code to mkedit's canonical ISO 639-1 code."""
    key = code.strip().lower()
    key = ALIASES.get(key, key)
    if key not in _BY_CODE:
        known = ", ".join(sorted(_BY_CODE))
        raise UnknownLanguageError(
            f"unknown language code {code!r}; supported: {known} (aliases: "
            + ", ".join(f"{a}->{c}" for a, c in sorted(ALIASES.items()))
            + ")"
        )
    return key


def get_language(code: str) -> Language:
    """The Language for a code or alias; raises UnknownLanguageError for anything else."""
    return _BY_CODE[normalize_code(code)]


def supported_codes() -> list[str]:
    """Canonical codes in a stable order."""
    return [lang.code for lang in _LANGUAGES]
