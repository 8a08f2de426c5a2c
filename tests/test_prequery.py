"""Pre-query derivation against offline tokenizers carrying copies of real chat templates."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from core.errors import ForgetlessError
from core.reconstruct.prequery import PreQuery, derive_prequery, stop_token_ids


def make_tokenizer(template, *, bos=None, eos=None, specials=(), added=()):
    """A tiny WordLevel tokenizer with the given special/added tokens and chat template (no hub)."""
    model = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    model.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=model, unk_token="[UNK]", bos_token=bos, eos_token=eos)
    if specials:
        tok.add_special_tokens({"additional_special_tokens": list(specials)})
    if added:
        tok.add_tokens(list(added))
    tok.chat_template = template
    return tok


CHATML_SPECIALS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")

SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
    "trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

QWEN25 = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful \
assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or \
(message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
LLAMA3_SPECIALS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")

LLAMA31 = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + \
'<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)

GEMMA3 = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""

MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

MISTRAL_V3 = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
        {{- raise_exception("After the optional system message, conversation roles must alternate \
user/assistant/user/assistant/...") }}
    {%- endif %}
    {%- set ns.index = ns.index + 1 %}
{%- endfor %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial \
optional system message!") }}
    {%- endif %}
{%- endfor %}
"""

PHI3 = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)

ZEPHYR = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)

DEEPSEEK = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ 'User: ' + message['content'] + '\\n\\n' }}{% elif message['role'] == 'assistant' %}"
    "{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}"
    "{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

CASES = {
    "smollm2": (
        make_tokenizer(SMOLLM2, bos="<|im_start|>", eos="<|im_end|>", specials=CHATML_SPECIALS),
        (
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
            "trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\n"
        ),
        ("<|im_end|>",),
    ),
    "qwen2.5": (
        make_tokenizer(QWEN25, eos="<|endoftext|>", specials=CHATML_SPECIALS),
        (
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. "
            "You are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\n"
        ),
        ("<|im_end|>", "<|endoftext|>"),
    ),
    "chatml": (
        make_tokenizer(CHATML, eos="<|im_end|>", specials=CHATML_SPECIALS),
        "<|im_start|>user\n",
        ("<|im_end|>",),
    ),
    "llama3": (
        make_tokenizer(LLAMA3, bos="<|begin_of_text|>", eos="<|end_of_text|>", specials=LLAMA3_SPECIALS),
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n",
        ("<|eot_id|>", "<|end_of_text|>"),
    ),
    "llama3.1": (
        make_tokenizer(LLAMA31, bos="<|begin_of_text|>", eos="<|eot_id|>", specials=LLAMA3_SPECIALS),
        (
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\n"
        ),
        ("<|eot_id|>",),
    ),
    "gemma": (
        make_tokenizer(GEMMA, bos="<bos>", eos="<eos>", specials=("<start_of_turn>", "<end_of_turn>")),
        "<bos><start_of_turn>user\n",
        ("<end_of_turn>", "<eos>"),
    ),
    "gemma3": (
        make_tokenizer(GEMMA3, bos="<bos>", eos="<eos>", specials=("<start_of_turn>", "<end_of_turn>")),
        "<bos><start_of_turn>user\n",
        ("<end_of_turn>", "<eos>"),
    ),
    "mistral-plain-inst": (
        make_tokenizer(MISTRAL, bos="<s>", eos="</s>"),
        "<s>[INST] ",
        ("[/INST]", "</s>"),
    ),
    "mistral-v3-control-inst": (
        make_tokenizer(MISTRAL_V3, bos="<s>", eos="</s>", specials=("[INST]", "[/INST]")),
        "<s>[INST] ",
        ("[/INST]", "</s>"),
    ),
    "phi3": (
        make_tokenizer(
            PHI3, bos="<s>", eos="<|endoftext|>", specials=("<|user|>", "<|assistant|>", "<|end|>")
        ),
        "<s><|user|>\n",
        ("<|end|>", "<|endoftext|>"),
    ),
    "zephyr": (
        make_tokenizer(ZEPHYR, bos="<s>", eos="</s>", added=("<|user|>", "<|assistant|>")),
        "<|user|>\n",
        ("</s>",),
    ),
    "deepseek-plain-text": (
        make_tokenizer(DEEPSEEK, bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>"),
        "<｜begin▁of▁sentence｜>User: ",
        ("Assistant:", "<｜end▁of▁sentence｜>"),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_real_template_shapes(name):
    tok, prefix, stop = CASES[name]
    assert derive_prequery(tok) == PreQuery(prefix=prefix, stop=stop)


@pytest.mark.parametrize("name", ["gemma", "gemma3", "mistral-plain-inst", "mistral-v3-control-inst"])
def test_template_copies_really_raise_on_bad_roles(name):
    """The copies keep the real templates' raise_exception guards, so derivation works despite them."""
    tok = CASES[name][0]
    with pytest.raises(Exception, match="alternate"):
        tok.apply_chat_template([{"role": "assistant", "content": "hi"}], tokenize=False)


def test_template_raising_on_generation_prompt_falls_back():
    template = (
        "{% if add_generation_prompt %}{{ raise_exception('add_generation_prompt is not supported') }}"
        "{% endif %}" + CHATML
    )
    tok = make_tokenizer(template, eos="<|endoftext|>", specials=CHATML_SPECIALS)
    assert derive_prequery(tok) == PreQuery("<|im_start|>user\n", ("<|im_end|>", "<|endoftext|>"))


def test_marker_only_between_turns_uses_two_message_conversation():
    """A training-style template: needs a final assistant turn and writes <|end|> only before the next one."""
    template = (
        "{% if add_generation_prompt %}{{ raise_exception('no generation prompt') }}{% endif %}"
        "{% if messages[-1]['role'] != 'assistant' %}{{ raise_exception('must end with assistant') }}"
        "{% endif %}"
        "{% for m in messages %}{% if not loop.first %}<|end|>\n{% endif %}<|{{ m['role'] }}|>\n"
        "{{ m['content'] }}{% endfor %}"
    )
    tok = make_tokenizer(template, specials=("<|user|>", "<|assistant|>", "<|end|>"))
    assert derive_prequery(tok) == PreQuery("<|user|>\n", ("<|end|>",))


def test_no_chat_template_is_a_one_line_error():
    tok = make_tokenizer(None, eos="</s>")
    with pytest.raises(ForgetlessError, match="has no chat template; pass --prefix and --stop") as info:
        derive_prequery(tok)
    assert "\n" not in str(info.value)


def test_template_that_always_raises_is_a_one_line_error():
    tok = make_tokenizer("{{ raise_exception('Only tool calls are supported!\\nreally') }}", eos="</s>")
    with pytest.raises(ForgetlessError, match="Only tool calls are supported!") as info:
        derive_prequery(tok)
    assert "\n" not in str(info.value)


def test_template_that_drops_the_user_text_is_an_error():
    tok = make_tokenizer("{% for m in messages %}<|{{ m['role'] }}|>{% endfor %}", eos="</s>")
    with pytest.raises(ForgetlessError, match="does not include the user's message"):
        derive_prequery(tok)


def test_no_marker_and_no_eos_is_an_error():
    tok = make_tokenizer("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(ForgetlessError, match="--stop"):
        derive_prequery(tok)


def test_stop_is_eos_when_template_has_no_marker():
    tok = make_tokenizer("{% for m in messages %}{{ m['content'] }}{% endfor %}", eos="</s>")
    assert derive_prequery(tok) == PreQuery("", ("</s>",))


def test_to_json():
    assert PreQuery("<s>[INST] ", ("[/INST]", "</s>")).to_json() == {
        "prefix": "<s>[INST] ",
        "stop": ["[/INST]", "</s>"],
    }


def test_stop_token_ids_special_tokens_and_eos():
    tok = CASES["qwen2.5"][0]
    ids = stop_token_ids(tok, derive_prequery(tok).stop)
    assert ids == [tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id]


def test_stop_token_ids_skip_multi_token_strings_and_dedupe_eos():
    tok = CASES["mistral-plain-inst"][0]
    assert stop_token_ids(tok, ["[/INST]", "</s>", "nonsense"]) == [tok.eos_token_id]


def test_stop_token_ids_count_added_non_special_tokens():
    tok = make_tokenizer(CHATML, eos="</s>", added=("<|im_start|>", "<|im_end|>"))
    stop = derive_prequery(tok).stop
    assert stop == ("<|im_end|>", "</s>")
    assert stop_token_ids(tok, stop) == [tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id]
    assert stop_token_ids(tok, ["hello"]) == [1, tok.eos_token_id]


def test_stop_token_ids_control_inst_token():
    tok = CASES["mistral-v3-control-inst"][0]
    assert stop_token_ids(tok, derive_prequery(tok).stop) == [
        tok.convert_tokens_to_ids("[/INST]"),
        tok.eos_token_id,
    ]
