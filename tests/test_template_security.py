"""Judge templates are rendered sandboxed: a template reaching into Python's object graph is refused,
an ordinary one renders exactly the text it rendered before the sandbox (issue #15)."""

import pytest

from self_rewarding_lm_pytorch import DEFAULT_REWARD_CONFIG, RewardConfig, RewardTemplateError
from self_rewarding_lm_pytorch.demo.task import demo_reward_config

pytestmark = pytest.mark.unit

PROMPT, RESPONSE = "What is 2+2?", "  It is Four. "

# Refused at construction: the unsafe access is in the template's text.
STATICALLY_UNSAFE = [
    ("{{ prompt.__class__.__mro__[1].__subclasses__() }} {{ response }}", "__class__"),
    ("{{ prompt|attr('__class__') }} {{ response }}", "attr('__class__')"),
    ("{{ prompt['__globals__'] }} {{ response }}", "'__globals__'"),
    ("{{ response }} {{ prompt.mro() }}", "'mro'"),
    ("{{ '{0.__class__.__init__}'.format(prompt) }} {{ response }}", "__class__"),
    ("{{ response.upper.__globals__ }} {{ prompt }}", "__globals__"),
    ("{{ response }} {{ prompt|attr('_private') }}", "_private"),
]

# Refused when rendering: the attribute name is computed, so only the sandbox sees it.
DYNAMICALLY_UNSAFE = [
    "{{ prompt|attr('__cla' ~ 'ss__') }} {{ response }}",
    "{{ prompt[('__cla' ~ 'ss__')] }} {{ response }}",
    "{% set name = '__' ~ 'class' ~ '__' %}{{ response|attr(name) }} {{ prompt }}",
    "{{ ('{0.' ~ '__class__}').format(prompt) }} {{ response }}",
]


@pytest.mark.parametrize(("template", "named"), STATICALLY_UNSAFE)
def test_unsafe_templates_are_refused_at_construction(template, named):
    with pytest.raises(RewardTemplateError, match="unsafe") as info:
        RewardConfig(template, "Score: {{ reward }}")
    assert named in str(info.value)


def test_a_template_reaching_for_globals_through_cycler_is_refused():
    # `cycler` is a jinja2 global: an unknown variable for a judge, and an unsafe walk besides
    with pytest.raises(RewardTemplateError, match="__globals__"):
        RewardConfig("{{ cycler.__init__.__globals__ }} {{ prompt }} {{ response }}", "Score: {{ reward }}")


@pytest.mark.parametrize("template", DYNAMICALLY_UNSAFE)
def test_unsafe_accesses_computed_at_render_time_are_refused_then(template):
    config = RewardConfig(template, "Score: {{ reward }}")
    with pytest.raises(RewardTemplateError, match="unsafe"):
        config.render(prompt=PROMPT, response=RESPONSE)


def test_a_refused_render_is_a_value_error_from_the_top_level():
    assert issubclass(RewardTemplateError, ValueError)


# Expected texts were computed with the plain (unsandboxed) jinja2 environment before the change.
ORDINARY = [
    ("Q: {{ prompt }}\nA: {{ response }}", "Q: What is 2+2?\nA:   It is Four. "),
    ("{{ prompt|upper }} / {{ response|lower|trim }}", "WHAT IS 2+2? / it is four."),
    ("{% for w in response.split() %}[{{ w }}]{% endfor %} <- {{ prompt }}", "[It][is][Four.] <- What is 2+2?"),
    (
        "{% if response|length > 5 %}long{% else %}short{% endif %}: {{ prompt }} {{ response }}",
        "long: What is 2+2?   It is Four. ",
    ),
    (
        "{{ prompt|replace('a', 'A') }} {{ response|wordcount }} words; {{ response[:3] }}",
        "WhAt is 2+2? 3 words;   I",
    ),
    (
        "{% for c in prompt %}{{ loop.index }}{{ c }}{% if not loop.last %},{% endif %}{% endfor %}"
        "|{{ response|title }}",
        "1W,2h,3a,4t,5 ,6i,7s,8 ,92,10+,112,12?|  It Is Four. ",
    ),
    (
        "{% set n = prompt|length %}{{ n }} {{ '%s-%s'|format(prompt, response) }} {{ response|default('x') }}",
        "12 What is 2+2?-  It is Four.    It is Four. ",
    ),
    (
        "{{ prompt ~ ' :: ' ~ response }}{# a comment #}\n{{ [prompt, response]|join(' | ') }}",
        "What is 2+2? ::   It is Four. \nWhat is 2+2? |   It is Four. ",
    ),
]


@pytest.mark.parametrize(("template", "expected"), ORDINARY)
def test_ordinary_templates_render_as_before(template, expected):
    assert RewardConfig(template, "Score: {{ reward }}").render(prompt=PROMPT, response=RESPONSE) == expected


def test_the_shipped_judges_render_as_before():
    assert DEFAULT_REWARD_CONFIG.render(prompt=PROMPT, response=RESPONSE) == (
        "Rate the answer to the question. Add 1 point for each that holds:\n"
        "it is relevant; it covers most of the question; it usefully answers the core of it;\n"
        "it is clear and well organised; it shows expertise, with no filler.\n"
        "Question: What is 2+2?\nAnswer:   It is Four. \n"
        'Justify briefly, then end with "Score: <points>" (0 to 5).'
    )
    assert demo_reward_config().render(prompt=PROMPT, response=RESPONSE) == "Judge   It is Four.  ? What is 2+2?"
