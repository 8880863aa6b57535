"""The chat messages an LLM gets for one turn: persona, memory, knowledge, the user.

Knowledge snippets carry their document ids so the model can say what it used; the system
message asks it to answer only from them, and to say so when they do not cover a question.
"""

from __future__ import annotations

import base64
from typing import Any

from engine.personas import Persona
from engine.replies import Snippet, TurnContext
from engine.smalltalk import MAX_TOPICS


def persona_lines(persona: Persona) -> list[str]:
    lines = [f"You are {persona.name}."]
    if persona.role:
        lines.append(persona.role)
    traits = []
    if persona.age is not None:
        traits.append(f"age {persona.age}")
    if persona.gender is not None:
        traits.append(persona.gender)
    if persona.zodiac is not None:
        traits.append(f"zodiac {persona.zodiac}")
    traits.append(persona.sociality)
    if persona.archetypes:
        traits.append("archetypes " + ", ".join(persona.archetypes))
    traits.append(f"mostly {persona.temperament.leading} in temperament")
    lines.append("Your style: " + "; ".join(traits) + ".")
    return lines


def build_messages(context: TurnContext, *, vision: bool = False) -> list[dict[str, Any]]:
    system = persona_lines(context.persona)
    memory = context.memory
    if memory.facts:
        known = ", ".join(f"{k}: {v}" for k, v in sorted(memory.facts.items()))
        system.append(f"What you know about the user: {known}.")
    if memory.summary:
        system.append(f"Earlier conversation, summarised: {memory.summary}")
    if context.snippets:
        system.append(
            "Answer from this knowledge only, and say plainly when it does not cover the "
            "question. Each piece starts with its document id in brackets, then what the "
            "piece is about in parentheses when that is known:"
        )
        system.extend(_piece(s) for s in context.snippets)
    else:
        system.append(
            "No knowledge base entry matches this message: do not invent facts; say plainly "
            "that you do not have that information."
        )
    if context.topics:
        covered = "; ".join(context.topics[:MAX_TOPICS])
        more = "; and more" if len(context.topics) > MAX_TOPICS else ""
        system.append(f"Your knowledge covers: {covered}{more}.")
    messages: list[dict[str, Any]] = [{"role": "system", "content": "\n".join(system)}]
    for turn in memory.recent:
        messages.append({"role": "user", "content": turn.user})
        messages.append({"role": "assistant", "content": turn.reply})
    text = context.message
    if context.voice_context:
        text += f"\n\n(The user also sent a voice note saying: {context.voice_context})"
    if context.context:
        text += f"\n\n(Additional context for this message: {context.context})"
    if context.image is None:
        messages.append({"role": "user", "content": text})
    elif vision:
        # OpenAI's content parts; vision servers (vLLM, llama.cpp, Ollama) take the same.
        data = base64.b64encode(context.image.data).decode()
        parts: list[dict[str, Any]] = [{"type": "text", "text": text or "What is this?"}]
        parts.append(
            {"type": "image_url", "image_url": {"url": f"data:{context.image.mime};base64,{data}"}}
        )
        messages.append({"role": "user", "content": parts})
    else:
        note = "(The user also sent an image, which you cannot see; say so if it matters.)"
        messages.append({"role": "user", "content": f"{text}\n\n{note}".strip()})
    return messages


def _piece(snippet: Snippet) -> str:
    about = " / ".join(line for line in snippet.context.splitlines() if line.strip())
    return (
        f"[{snippet.external_id}] ({about}) {snippet.text}"
        if about
        else (f"[{snippet.external_id}] {snippet.text}")
    )


SUMMARY_INSTRUCTION = (
    "Condense these notes of an earlier conversation into at most five short lines. Keep "
    "what the user said about themselves, what they asked and what was promised; drop "
    "pleasantries. Answer with the lines only."
)


def summary_messages(summary: str) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": SUMMARY_INSTRUCTION},
        {"role": "user", "content": summary},
    ]


QUESTIONS_INSTRUCTION = (
    "Write questions a user could ask about the topics below that these passages answer. "
    "Use only what the passages say. One question a line, at most {count}, nothing else."
)


def questions_messages(
    topics: list[str], context: str | None, passages: list[str], count: int
) -> list[dict[str, Any]]:
    """What the model gets to write seed 002's prompts, grounded in retrieved passages."""
    lines = [f"Topics: {'; '.join(topics)}"]
    if context:
        lines.append(f"Context: {context}")
    lines.append("Passages:")
    lines.extend(f"- {passage}" for passage in passages)
    return [
        {"role": "system", "content": QUESTIONS_INSTRUCTION.format(count=count)},
        {"role": "user", "content": "\n".join(lines)},
    ]
