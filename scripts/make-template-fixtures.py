"""Chat-template cases rendered by transformers' own apply_chat_template, for
tests/chat_templates.rs: what transformers adds to Jinja (tojson as json.dumps, strftime_now,
Python's str.strip), on templates built the way real model families write them.

    .venv/bin/python scripts/make-template-fixtures.py      (after scripts/python-env.sh)

Writes tests/fixtures/templates/cases.json: [{"name", "template", "messages",
"add_generation_prompt", "text"}], text being transformers' rendering (with the chat
fixture's bos and eos tokens).
"""
import json
from pathlib import Path

from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "templates" / "cases.json"

ARGUMENTS = {
    "zeta": 1,
    "alpha": "<b>&'\"",
    "nested": {"list": [1, 2.5, 1e-05, 1e16, 0.1, True, None, -0.0], "é": "ünïcode ☃ 𝄞",
               "ctl": "\u0001\u001f\t\n\u007f"},
    "empty": {},
    "elist": [],
}
TOOL_CALL = [{"role": "user", "content": "Weather?"},
             {"role": "assistant", "tool_calls": [{"type": "function", "function": {
                 "name": "get_weather", "arguments": ARGUMENTS}}]}]

# Llama-3.1-style tool calls, and the other tojson options templates use.
TOOL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m.tool_calls %}{% for tc in m.tool_calls %}"
    '{"name": "{{ tc.function.name }}", "parameters": {{ tc.function.arguments | tojson }}}'
    "{% endfor %}{{ eos_token }}{% else %}<{{ m.role }}>{{ m.content }}\n{% endif %}{% endfor %}"
)
OPTIONS_TEMPLATE = (
    "{% set a = messages[1].tool_calls[0].function.arguments %}"
    "{{ a | tojson(indent=4) }}\n{{ a | tojson(indent=2) }}\n{{ a | tojson(ensure_ascii=True) }}\n"
    "{{ a | tojson(sort_keys=True) }}\n{{ a | tojson(separators=(',', ':')) }}\n"
    "{{ a.nested | tojson(indent='\t') }}\n{{ [] | tojson(indent=2) }}{{ {} | tojson }}\n"
    "{% for k, v in a.items() %}{{ k }},{% endfor %}"
)
# Qwen2.5 and others strip message content; Python's whitespace is wider than Rust's.
STRIP_TEMPLATE = (
    "{% for m in messages %}[{{ m.content | trim }}]({{ m.content.strip() }})"
    "({{ m.content.lstrip() }})({{ m.content.rstrip() }})({{ m.content.strip('x ') }})\n"
    "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)
STRIP_MESSAGES = [{"role": "user", "content": c} for c in
                  ["\u001f hi \u00a0", "\u3000x\u001c", "  spaces  ", "\u200bzero\u200b",
                   "\u001d\u001e\u0085mixed\u2028", "xx x kept x xx"]]
# Llama-3.2 asks whether strftime_now exists before falling back to a fixed date.
DATE_TEMPLATE = (
    "{%- if strftime_now is defined %}{%- set date_string = 'has strftime_now' %}"
    "{%- else %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "Today Date: {{ date_string }}\n{% for m in messages %}{{ m.content }}{% endfor %}"
)


def main():
    tok = AutoTokenizer.from_pretrained(ROOT / "tests" / "fixtures" / "chat")
    cases = []
    for name, template, messages, gen in [
        ("tool-call arguments", TOOL_TEMPLATE, TOOL_CALL, False),
        ("tojson options", OPTIONS_TEMPLATE, TOOL_CALL, False),
        ("python strip", STRIP_TEMPLATE, STRIP_MESSAGES, True),
        ("strftime_now is defined", DATE_TEMPLATE, [{"role": "user", "content": "Hi"}], True),
    ]:
        text = tok.apply_chat_template(messages, chat_template=template, tokenize=False,
                                       add_generation_prompt=gen)
        cases.append({"name": name, "template": template, "messages": messages,
                      "add_generation_prompt": gen, "text": text})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(cases, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT} ({len(cases)} cases)")


if __name__ == "__main__":
    main()
