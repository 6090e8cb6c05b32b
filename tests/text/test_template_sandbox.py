"""A hostile chat template in a checkpoint can neither run code nor exhaust memory: every way to build a huge
value is refused quickly with a clear error."""

import time

import pytest

from kimi_local.text.chat import ChatFormat

HOSTILE = [
    "{{ 'a' * 10**10 }}",
    "{{ [0] * 10**9 }}",
    "{% set n = 10**9 %}{{ 10 ** n }}",
    "{{ ''.ljust(10**10) }}",
    "{{ 'x'.center(width=10**10) }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ 'aaaaaaaaaa' }}{% endfor %}{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",  # no output
    "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}",
    "{% set counted_iter = none %}{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for i in 'x' * 4000000 %}{% for j in 'x' * 4000000 %}{% endfor %}{% endfor %}",
    "{% for m in messages %}{% for i in range(100000) %}{{ i | string | length }}{% endfor %}"
    "{% for i in range(100000) %}{% for j in range(100) %}{% endfor %}{% endfor %}{% endfor %}",
    "{{ ([range(100000)] * 4000000) | map('sum') | sum }}",  # per-item filter calls
    "{% for x in [0] recursive %}{% if loop.depth < 3 %}{{ loop(range(100000)) }}{% endif %}{% endfor %}",
    "{% for i in range(100000) %}{% for j in [0, 1] %}{% set s = 'x' * 4000000 %}{% endfor %}{% endfor %}",
    "{{ '' | center(1500000000) | length }}",
    "{{ ('%1500000000d' % 1) | length }}",
    "{{ ('%.1500000000f' | format(1.0)) | length }}",
    "{{ '{:>1500000000}'.format(1) | length }}",
    "{{ '{0:{1}}'.format(1, 1500000000) | length }}",
    "{% set s = 'a' * 4000000 %}{{ s | replace('a', 'a' * 20) | length }}",
    "{% set s = 'a' * 4000000 %}{{ s.replace('a', 'a' * 20) | length }}",
    "{{ (['a' * 4000000] * 1000) | join | length }}",
    "{{ ('' ~ ',').join(['a' * 4000000] * 1000) | length }}",
    "{{ ('x\n' * 2000000) | indent(1000) | length }}",
    "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
    "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
    "{% include 'x' %}",
    "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "{{ ().__class__.__base__.__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
]


@pytest.mark.parametrize("template", HOSTILE)
def test_hostile_templates_fail_fast_with_a_clear_error(tiny_tok, template):
    chat = ChatFormat(tiny_tok, template, source="evil/chat_template.jinja")
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="evil/chat_template.jinja: chat template failed"):
        chat.render([{"role": "user", "content": "hi"}])
    assert time.perf_counter() - t0 < 10


def test_bounded_values_below_the_limits_still_render(tiny_tok):
    chat = ChatFormat(tiny_tok, "{{ '-' * 80 }}{{ 2 ** 100 }}{{ 'x'.ljust(3) }}|", source="ok")
    assert chat.render([{"role": "user", "content": "hi"}]) == "-" * 80 + str(2**100) + "x  |"
