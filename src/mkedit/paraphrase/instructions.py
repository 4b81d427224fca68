"""The paper's paraphrase instruction (App. A.3), written in each language mkedit knows.

The paper asks Qwen2-72B-instruct, in English: "You are an expert at sentence rewriting. Below I will give
you a subject and a question containing the subject. Please give me 30 questions including this subject in
English. They must have the same semantics as the given question. Subject: {}. Question containing this
Subject: {}". Each translation below keeps that wording, asks for ``n`` questions *in that language*, and
puts the count noun in the form the number takes (1 otázku / 3 otázky / 30 otázek); nothing is added
(no format hint), so a model gets what the paper's model got.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mkedit.languages import normalize_code


def _one_other(n: int) -> int:
    return 0 if n == 1 else 1


def _czech(n: int) -> int:
    return 0 if n == 1 else 1 if 2 <= n <= 4 else 2


def _russian(n: int) -> int:
    if n % 10 == 1 and n % 100 != 11:
        return 0
    return 1 if 2 <= n % 10 <= 4 and not 12 <= n % 100 <= 14 else 2


def _arabic(n: int) -> int:
    """Forms: accusative singular (1, 11-99), dual (2), plural (3-10), genitive singular (100, 101, 102...)."""
    last = n % 100
    if n == 1 or 11 <= last <= 99:
        return 0
    if n == 2:
        return 1
    return 2 if 3 <= last <= 10 else 3


def _invariant(n: int) -> int:
    return 0


@dataclass(frozen=True)
class Instruction:
    """One language's instruction: ``template`` has ``{n}``, ``{questions}`` (the count noun in the form
    ``rule(n)`` picks from ``forms``), ``{subject}`` and ``{question}``."""

    template: str
    forms: tuple[str, ...]
    rule: Callable[[int], int]

    def render(self, subject: str, question: str, n: int) -> str:
        return self.template.format(n=n, questions=self.forms[self.rule(n)], subject=subject, question=question)


INSTRUCTIONS: dict[str, Instruction] = {
    "en": Instruction(
        "You are an expert at sentence rewriting. Below I will give you a subject and a question containing the "
        "subject. Please give me {n} {questions} including this subject in English. They must have the same "
        "semantics as the given question. Subject: {subject}. Question containing this Subject: {question}",
        ("question", "questions"),
        _one_other,
    ),
    "zh": Instruction(
        "你是一位句子改写专家。下面我会给你一个主体和一个包含该主体的问题。请用中文给我{n}个包含这个主体的{questions}。"
        "它们必须与给定问题的语义相同。主体：{subject}。包含该主体的问题：{question}",
        ("问题",),
        _invariant,
    ),
    "cs": Instruction(
        "Jste odborník na přepisování vět. Níže vám dám subjekt a otázku, která tento subjekt obsahuje. Dejte mi "
        "prosím {n} {questions} v češtině, které obsahují tento subjekt. Musí mít stejný význam jako zadaná "
        "otázka. Subjekt: {subject}. Otázka obsahující tento subjekt: {question}",
        ("otázku", "otázky", "otázek"),
        _czech,
    ),
    "de": Instruction(
        "Sie sind ein Experte für das Umschreiben von Sätzen. Im Folgenden gebe ich Ihnen ein Subjekt und eine "
        "Frage, die dieses Subjekt enthält. Bitte geben Sie mir {n} {questions} auf Deutsch, die dieses Subjekt "
        "enthalten. Sie müssen dieselbe Bedeutung haben wie die gegebene Frage. Subjekt: {subject}. Frage, die "
        "dieses Subjekt enthält: {question}",
        ("Frage", "Fragen"),
        _one_other,
    ),
    "nl": Instruction(
        "U bent een expert in het herschrijven van zinnen. Hieronder geef ik u een onderwerp en een vraag die dit "
        "onderwerp bevat. Geef mij alstublieft {n} {questions} in het Nederlands die dit onderwerp bevatten. Ze "
        "moeten dezelfde betekenis hebben als de gegeven vraag. Onderwerp: {subject}. Vraag die dit onderwerp "
        "bevat: {question}",
        ("vraag", "vragen"),
        _one_other,
    ),
    "es": Instruction(
        "Eres un experto en reescritura de oraciones. A continuación te daré un sujeto y una pregunta que contiene "
        "ese sujeto. Por favor, dame {n} {questions} en español que incluyan este sujeto. Deben tener el mismo "
        "significado que la pregunta dada. Sujeto: {subject}. Pregunta que contiene este sujeto: {question}",
        ("pregunta", "preguntas"),
        _one_other,
    ),
    "fr": Instruction(
        "Vous êtes un expert en reformulation de phrases. Ci-dessous, je vais vous donner un sujet et une question "
        "contenant ce sujet. Veuillez me donner {n} {questions} en français incluant ce sujet. Elles doivent avoir "
        "le même sens que la question donnée. Sujet : {subject}. Question contenant ce sujet : {question}",
        ("question", "questions"),
        _one_other,
    ),
    "pt": Instruction(
        "Você é um especialista em reescrita de frases. A seguir, vou lhe dar um sujeito e uma pergunta que contém "
        "esse sujeito. Por favor, dê-me {n} {questions} em português que incluam este sujeito. Elas devem ter o "
        "mesmo significado que a pergunta dada. Sujeito: {subject}. Pergunta que contém este sujeito: {question}",
        ("pergunta", "perguntas"),
        _one_other,
    ),
    "ru": Instruction(
        "Вы эксперт по перефразированию предложений. Ниже я дам вам субъект и вопрос, содержащий этот субъект. "
        "Пожалуйста, дайте мне {n} {questions} на русском языке с этим субъектом. Они должны иметь тот же смысл, "
        "что и данный вопрос. Субъект: {subject}. Вопрос, содержащий этот субъект: {question}",
        ("вопрос", "вопроса", "вопросов"),
        _russian,
    ),
    "th": Instruction(
        "คุณเป็นผู้เชี่ยวชาญด้านการเขียนประโยคใหม่ ด้านล่างนี้ฉันจะให้ประธานและคำถามที่มีประธานนั้นแก่คุณ "
        "กรุณาให้{questions}ที่มีประธานนี้เป็นภาษาไทย {n} ข้อ คำถามเหล่านั้นต้องมีความหมายเหมือนกับคำถามที่ให้มา "
        "ประธาน: {subject} คำถามที่มีประธานนี้: {question}",
        ("คำถาม",),
        _invariant,
    ),
    "tr": Instruction(
        "Cümle yeniden yazma konusunda bir uzmansınız. Aşağıda size bir özne ve bu özneyi içeren bir soru "
        "vereceğim. Lütfen bana bu özneyi içeren {n} Türkçe {questions} verin. Verilen soruyla aynı anlama sahip "
        "olmalıdırlar. Özne: {subject}. Bu özneyi içeren soru: {question}",
        ("soru",),
        _invariant,
    ),
    "vi": Instruction(
        "Bạn là một chuyên gia viết lại câu. Dưới đây tôi sẽ đưa cho bạn một chủ thể và một câu hỏi có chứa chủ "
        "thể đó. Hãy cho tôi {n} {questions} bằng tiếng Việt có chứa chủ thể này. Chúng phải có cùng ngữ nghĩa với "
        "câu hỏi đã cho. Chủ thể: {subject}. Câu hỏi có chứa chủ thể này: {question}",
        ("câu hỏi",),
        _invariant,
    ),
    "ja": Instruction(
        "あなたは文の書き換えの専門家です。以下に、主体とその主体を含む質問を示します。この主体を含む{questions}を"
        "日本語で{n}個ください。それらは与えられた質問と同じ意味でなければなりません。主体：{subject}。"
        "この主体を含む質問：{question}",
        ("質問",),
        _invariant,
    ),
    "ko": Instruction(
        "당신은 문장 재작성 전문가입니다. 아래에 주체와 그 주체를 포함한 질문을 드리겠습니다. 이 주체를 포함한 "
        "{questions}을 한국어로 {n}개 주세요. 그 질문들은 주어진 질문과 의미가 같아야 합니다. 주체: {subject}. "
        "이 주체를 포함한 질문: {question}",
        ("질문",),
        _invariant,
    ),
    "it": Instruction(
        "Sei un esperto di riscrittura di frasi. Qui sotto ti darò un soggetto e una domanda che contiene questo "
        "soggetto. Per favore, dammi {n} {questions} in italiano che includano questo soggetto. Devono avere lo "
        "stesso significato della domanda data. Soggetto: {subject}. Domanda contenente questo soggetto: {question}",
        ("domanda", "domande"),
        _one_other,
    ),
    "ar": Instruction(
        "أنت خبير في إعادة صياغة الجمل. سأعطيك أدناه موضوعًا وسؤالًا يحتوي على هذا الموضوع. من فضلك أعطني {n} "
        "{questions} باللغة العربية تتضمن هذا الموضوع. يجب أن يكون لها نفس معنى السؤال المعطى. الموضوع: {subject}. "
        "السؤال الذي يحتوي على هذا الموضوع: {question}",
        ("سؤالًا", "سؤالين", "أسئلة", "سؤال"),
        _arabic,
    ),
}


def instruction(lang: str, subject: str, question: str, n: int) -> str:
    """The A.3 instruction in ``lang`` asking for ``n`` paraphrases of ``question`` that keep ``subject``.

    One language per instruction, so the model answers in the language whose neurons are being located.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return INSTRUCTIONS[normalize_code(lang)].render(subject, question, n)
