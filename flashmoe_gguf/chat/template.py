"""A GGUF's Jinja chat template rendered the way Hugging Face transformers renders it.

Environment: sandboxed, trim_blocks, lstrip_blocks, loop controls, the `{% generation %}` tag passed through,
`tojson` as transformers writes it (no ASCII escaping, indent/separators/sort_keys), and the globals
`raise_exception` and `strftime_now`. Variables: messages, tools, add_generation_prompt, bos_token,
eos_token, date_string, and any template keyword (enable_thinking, reasoning_effort, ...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Mapping, Sequence

# used when a GGUF carries no template (llama-cpp-python's ChatML)
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


class TemplateError(ValueError):
    """The template refused the messages (its raise_exception) or failed to render."""


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise(message: str) -> None:
    raise TemplateError(message)


def _environment() -> Any:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        """transformers' {% generation %} ... {% endgeneration %}: renders its body."""
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols, Generation])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    return env


@dataclass
class ChatTemplate:
    """source: the Jinja text; bos_token / eos_token: the vocabulary's texts of them."""
    source: str
    bos_token: str = ""
    eos_token: str = ""
    now: Callable[[], datetime] = datetime.now
    _compiled: Any = field(default=None, init=False, repr=False, compare=False)

    def render(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None,
               add_generation_prompt: bool = True, **extra: Any) -> str:
        import jinja2
        if self._compiled is None:
            try:
                self._compiled = _environment().from_string(self.source)
            except jinja2.TemplateError as exc:
                raise TemplateError(f"the chat template does not compile: {exc}") from exc
        context = {"date_string": self.now().strftime("%d %b %Y"),
                   "strftime_now": lambda fmt: self.now().strftime(fmt), **extra}
        if tools:
            context["tools"] = list(tools)
        try:
            return str(self._compiled.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                             bos_token=self.bos_token, eos_token=self.eos_token, **context))
        except TemplateError:
            raise
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            raise TemplateError(f"the chat template failed: {type(exc).__name__}: {exc}") from exc
