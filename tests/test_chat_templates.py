"""Chat templates: exact renderings of the built-ins, a GGUF-like (Qwen2.5) template with and
without tools, the sandbox, and what --chat-template chooses."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import pytest

from oxiserve.engine.base import ChatMessage, ToolSpec, chatml
from oxiserve.engine.chat_templates import (
    TOOL_INSTRUCTIONS,
    ChatTemplate,
    TemplateError,
    load_template,
)

CONVERSATION = (
    ChatMessage("system", "Be brief."),
    ChatMessage("user", "Weather in Paris?"),
    ChatMessage("assistant", "Let me look."),
    ChatMessage("tool", "18C"),
    ChatMessage("user", "Thanks"),
)
WEATHER = ToolSpec(
    "get_weather",
    "Weather in a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
WEATHER_JSON = (
    '{"name": "get_weather", "description": "Weather in a city", "parameters": '
    '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}'
)

# Qwen2.5's chat template (the one its GGUF files carry), written from memory.
QWEN25 = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n\
You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and \
arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \
\\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. \
You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) \
or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


def test_chatml_renders_every_role_and_the_tool_result_as_a_user_turn() -> None:
    prompt = load_template("chatml", None).render(CONVERSATION)
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\nLet me look.<|im_end|>\n"
        "<|im_start|>user\nTool result: 18C<|im_end|>\n"
        "<|im_start|>user\nThanks<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_chatml_without_generation_prompt_ends_with_the_last_turn() -> None:
    prompt = load_template("chatml", None).render(CONVERSATION[:3], add_generation_prompt=False)
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\nLet me look.<|im_end|>\n"
    )


def test_chatml_matches_the_engines_own_chatml_function() -> None:
    assert load_template("chatml", None).render(CONVERSATION[:3]) == chatml(CONVERSATION[:3])


def test_llama3_renders_headers_and_eot_and_trims_content() -> None:
    messages = [*CONVERSATION[:4], ChatMessage("user", "  Thanks\n")]
    prompt = load_template("llama3", None).render(messages)
    assert prompt == (
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWeather in Paris?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nLet me look.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nTool result: 18C<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nThanks<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_llama3_without_generation_prompt() -> None:
    prompt = load_template("llama3", None).render(
        [ChatMessage("user", "Hi")], add_generation_prompt=False
    )
    assert prompt == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"


def test_alpaca_uses_the_system_message_as_preamble() -> None:
    template = ChatTemplate(load_template("alpaca", None).source, eos_token="</s>")
    assert template.render(CONVERSATION) == (
        "Be brief.\n\n"
        "### Instruction:\nWeather in Paris?\n\n"
        "### Response:\nLet me look.</s>\n\n"
        "### Instruction:\nTool result: 18C\n\n"
        "### Instruction:\nThanks\n\n"
        "### Response:\n"
    )


def test_alpaca_without_system_message_has_the_usual_preamble() -> None:
    prompt = load_template("alpaca", None).render(
        [ChatMessage("user", "Hi")], add_generation_prompt=False
    )
    assert prompt == (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nHi\n\n"
    )


@pytest.mark.parametrize("name", ["chatml", "llama3", "alpaca"])
def test_builtins_do_not_render_tools_themselves(name: str) -> None:
    template = load_template(name, None)
    assert template.name == name
    assert not template.supports_tools


def instructions(tools_json: str) -> str:
    return (
        "You have access to the following tools, each given as JSON (name, description and "
        "the JSON schema of its arguments):\n"
        f"{tools_json}\n\n"
        "To call a tool, reply with only one line per call, in exactly this format:\n"
        '<tool_call>{"name": "<tool name>", "arguments": {<the arguments as a JSON object>}}'
        "</tool_call>\n"
        "If no tool is needed, reply normally."
    )


def test_tool_instructions_text_is_the_documented_one() -> None:
    assert TOOL_INSTRUCTIONS.format(tools=WEATHER_JSON) == instructions(WEATHER_JSON)


def test_tools_merge_into_the_first_system_message() -> None:
    prompt = load_template("chatml", None).render(CONVERSATION[:2], [WEATHER])
    assert prompt == (
        f"<|im_start|>system\nBe brief.\n\n{instructions(WEATHER_JSON)}<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_tools_come_in_a_system_message_of_their_own_without_one() -> None:
    now = ToolSpec("now")
    prompt = load_template("llama3", None).render([ChatMessage("user", "Time?")], [WEATHER, now])
    tools_json = WEATHER_JSON + '\n{"name": "now", "description": "", "parameters": {}}'
    assert prompt == (
        "<|begin_of_text|>"
        f"<|start_header_id|>system<|end_header_id|>\n\n{instructions(tools_json)}<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nTime?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_qwen_template_without_tools() -> None:
    template = load_template(None, QWEN25)
    assert template.name == "gguf"
    assert template.supports_tools
    assert template.fallback_reason is None
    assert template.render([ChatMessage("user", "Hi")]) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. "
        "You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_qwen_template_renders_tools_and_tool_results_itself() -> None:
    messages = [
        *CONVERSATION[:2],
        ChatMessage(
            "assistant",
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        ),
        ChatMessage("tool", "18C"),
        ChatMessage("tool", "windy"),
    ]
    prompt = load_template(None, QWEN25).render(messages, [WEATHER])
    tool_json = (
        '{"type": "function", "function": {"name": "get_weather", "description": '
        '"Weather in a city", "parameters": {"type": "object", "properties": {"city": '
        '{"type": "string"}}, "required": ["city"]}}}'
    )
    assert prompt == (
        "<|im_start|>system\nBe brief.\n\n# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{tool_json}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments "
        "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n18C\n</tool_response>"
        "\n<tool_response>\nwindy\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_template_variables_tokens_and_tojson_as_hugging_face_has_them() -> None:
    source = (
        "{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}|{{ tools }}|"
        "{{ messages | tojson }}|{{ {'a': [1]} | tojson(indent=2) }}"
    )
    template = ChatTemplate(source, bos_token="<s>", eos_token="</s>")
    prompt = template.render([ChatMessage("user", "<a & é>")], add_generation_prompt=False)
    assert prompt == (
        '<s>|</s>|False|None|[{"role": "user", "content": "<a & é>"}]|{\n  "a": [\n    1\n  ]\n}'
    )


def test_strftime_now_is_the_current_local_time() -> None:
    before = datetime.now().strftime("%Y-%m-%d")
    rendered = ChatTemplate("{{ strftime_now('%Y-%m-%d') }}").render([])
    assert rendered in {before, datetime.now().strftime("%Y-%m-%d")}


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ messages.__class__ }}", "'__class__' of a list is not allowed"),
        ("{{ ''.__class__.__mro__ }}", "'__class__' of a str is not allowed"),
        ("{{ messages.append(1) }}", "'append' of a list is not allowed"),
        ("{{ raise_exception('Roles must\nalternate') }}", "refused: Roles must alternate"),
        ("{{ 1 + none }}", "unsupported operand"),
    ],
)
def test_template_failures_are_one_line_template_errors(source: str, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        ChatTemplate(source, name="bad").render([ChatMessage("user", "Hi")])
    assert message in str(caught.value)
    assert str(caught.value).startswith("chat template 'bad' ")
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_a_template_that_does_not_compile_is_a_template_error() -> None:
    with pytest.raises(TemplateError, match=r"^chat template 'x' does not compile: .*\(line 2\)$"):
        ChatTemplate("ok\n{% for %}", name="x")


def test_load_template_defaults() -> None:
    assert load_template(None, None).name == "chatml"
    assert load_template(None, "").name == "chatml"
    assert load_template(None, None).fallback_reason is None


def test_a_broken_gguf_template_falls_back_to_chatml(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="oxiserve.engine"):
        template = load_template(None, "{% if messages %}unclosed")
    assert template.name == "chatml"
    assert template.fallback_reason is not None
    assert template.fallback_reason.startswith("chat template 'gguf' does not compile")
    assert "using chatml" in caplog.text
    assert template.render([ChatMessage("user", "Hi")]) == chatml([ChatMessage("user", "Hi")])


def test_choice_overrides_the_gguf_template() -> None:
    assert load_template("alpaca", QWEN25).name == "alpaca"


def test_a_jinja_file_is_loaded(tmp_path: Path) -> None:
    path = tmp_path / "mine.jinja"
    path.write_text("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}")
    template = load_template(str(path), QWEN25)
    assert template.name == "mine.jinja"
    assert template.render(CONVERSATION[:2]) == "[system] Be brief.\n[user] Weather in Paris?\n"


def test_a_missing_file_is_a_value_error_naming_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.jinja")
    with pytest.raises(ValueError, match=r"nope\.jinja") as caught:
        load_template(missing, None)
    assert missing in str(caught.value)
    assert "\n" not in str(caught.value)
    assert not isinstance(caught.value, TemplateError)


def test_a_chosen_file_that_does_not_compile_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    path = tmp_path / "broken.jinja"
    path.write_text("{{ unclosed")
    with pytest.raises(TemplateError, match=r"broken\.jinja"):
        load_template(str(path), None)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ messages }}", ("<tool_call>", "arguments")),  # no tools: the instructions' format
        (QWEN25, ("<tool_call>\n", "arguments")),
        ("{% if tools %}[AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]", ("[TOOL_CALLS] [", "arguments")),
        (
            "{% if tools %}<|start_header_id|>ipython: parameters {{ tools }}{% endif %}",
            ("", "parameters"),
        ),
    ],
)
def test_the_call_format_is_the_templates_models_own(
    source: str, expected: tuple[str, str]
) -> None:
    # What a forced tool call is started with, so the model continues its own format.
    assert ChatTemplate(source).call_format == expected
