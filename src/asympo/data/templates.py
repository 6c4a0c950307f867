"""Prompt templates: how a question becomes the text a model is asked to continue.

- "plain": the question, a blank line, and an instruction saying where to put the final answer
  (by default `\\boxed{}`, which is what `asympo.rewards.math_reward` extracts first).
- "chat": the plain text as one user message, rendered by the tokenizer's own chat template with the
  assistant turn opened (`apply_chat_template(..., add_generation_prompt=True)`); `chat_template_kwargs`
  go to the template as well (e.g. `{"enable_thinking": False}` for Qwen3's non-thinking mode).
- "raw": the question unchanged, for data whose prompts are already complete.

A template may also be any function `(question: str) -> str`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

TEMPLATES = ("plain", "chat", "raw")

Template = str | Callable[[str], str]


def check_template(template: Template, tokenizer: Any = None) -> None:
    """Raise ValueError now (before any data is read) if `template` cannot be rendered."""
    if callable(template):
        return
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; valid templates: {list(TEMPLATES)}, or a function")
    if template == "chat":
        if tokenizer is None or not hasattr(tokenizer, "apply_chat_template"):
            raise ValueError(
                "template 'chat' needs a tokenizer with apply_chat_template (pass tokenizer=...)"
            )
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(
                "template 'chat': this tokenizer has no chat template (tokenizer.chat_template is None)"
            )


def chat_template_with(tokenizer: Any, chat_template_kwargs: dict | None = None) -> Template:
    """The "chat" template with extra chat-template arguments bound, as a `(question) -> str` template
    (plain "chat" when there are none). Raises now if the tokenizer cannot render chat prompts."""
    check_template("chat", tokenizer)
    if not chat_template_kwargs:
        return "chat"
    kwargs = dict(chat_template_kwargs)

    def template(question: str) -> str:
        return render_prompt(question, "chat", tokenizer, chat_template_kwargs=kwargs)

    return template


def render_prompt(
    question: str,
    template: Template = "plain",
    tokenizer: Any = None,
    instruction: str = BOXED_INSTRUCTION,
    chat_template_kwargs: dict | None = None,
) -> str:
    """The prompt for `question` under `template`; `instruction` is the answer-format line of plain/chat;
    `chat_template_kwargs` are passed to the tokenizer's chat template (template "chat" only)."""
    check_template(template, tokenizer)
    if callable(template):
        return template(question)
    if template == "raw":
        return question
    plain = f"{question.strip()}\n\n{instruction}"
    if template == "plain":
        return plain
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": plain}],
        tokenize=False,
        add_generation_prompt=True,
        **(chat_template_kwargs or {}),
    )
    if not isinstance(rendered, str):
        raise TypeError(f"tokenizer.apply_chat_template returned {type(rendered).__name__}, expected str")
    return rendered
