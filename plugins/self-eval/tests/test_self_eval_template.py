"""The critique template: checked when the source is built, and every variable renders."""

from types import SimpleNamespace

import pytest
from distil_core import ConfigError
from distil_core import Problem
from self_eval_testlib import WriterPlugin, graded, host_with_plugin

from distil_self_eval import DEFAULT_TEMPLATE, VARIABLES, CritiqueTemplate


@pytest.fixture
def host():
    return host_with_plugin((WriterPlugin, "writer"))


def build(host, **options):
    options.setdefault("model", {"expert": "writer"})
    return host.build("feedback_source", "self_eval", options, runtime=SimpleNamespace(host=host))


def test_unknown_variable_is_named_with_the_nearest_valid_one(host):
    with pytest.raises(ConfigError) as err:
        build(host, template="Problem: {probelm}\nAttempt: {response}")
    message = str(err.value)
    assert message.startswith("feedback source 'self_eval': option 'template' uses unknown variable {probelm}.")
    assert "Did you mean 'problem'?" in message
    assert "Valid: answer, problem, reference, response, score, verdict." in message
    assert "\n" not in message


def test_the_template_is_checked_before_any_model_is_looked_for(host):
    # model: student with no run to lend one would fail too; the template is reported first
    with pytest.raises(ConfigError, match="unknown variable {respons}. Did you mean 'response'"):
        host.build("feedback_source", "self_eval", {"template": "{respons}"})


@pytest.mark.parametrize(
    "template, expected",
    [
        ("Problem: {problem\nAttempt: {response}", r"braces do not pair: the '\{' at character 10 is never closed"),
        ("Attempt: {response}}", r"braces do not pair: a lone '\}' at character 20"),
        ("a } b {response}", r"a lone '\}' at character 3 \(near 'a \} b \{response\}'\)"),
        ("Verdict: {verdict", r"the '\{' at character 10 is never closed"),
    ],
)
def test_unbalanced_braces_say_where(host, template, expected):
    with pytest.raises(ConfigError, match=expected) as err:
        build(host, template=template)
    assert "a literal brace as {{ or }}" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "template, expected",
    [
        ("Notes so far: {feedback}", r"\{feedback\} is not available to a feedback source"),
        ("Attempt: {}", r"\{\} is a positional placeholder"),
        ("Attempt: {0}", r"\{0\} is a positional placeholder"),
        ("{problem.upper}", r"\{problem.upper\} reaches into \{problem\}"),
        ("{response[0]}", r"\{response\[0\]\} reaches into \{response\}"),
        ("{response} {problem:.2f}", r"cannot be rendered: Unknown format code 'f'"),
        # before: accepted, and the critic was sent the literal text "{response}"
        ("Problem: {{problem}}\nAttempt: {{response}}", r"does not use \{response\}"),
        ("What went wrong?", r"does not use \{response\}"),
        ("{score:{width}}", r"\{score:\{width\}\} has a replacement field inside its format spec"),
        ("   ", r"must be a non-empty string"),
    ],
)
def test_other_template_mistakes_are_config_errors(host, template, expected):
    with pytest.raises(ConfigError, match=expected):
        build(host, template=template)


@pytest.mark.parametrize(
    "template, expected",
    [
        # before: passed the check, then the score became the spec: the response rendered empty
        # (0.0: precision 0), as one space (1.0), or failed mid-run (1e-05: no format spec)
        ("Attempt: {response:{score}}", r"option 'template': \{response:\{score\}\} has a replacement field inside "
                                        r"its format spec; a format spec must be written out"),
        ("Attempt: {response!r:>{score}}", r"\{response!r:>\{score\}\} has a replacement field inside"),
        # before: a MemoryError raised by the check itself
        ("Attempt: {response:>100000000000}", r"option 'template': \{response:>100000000000\} asks for "
                                              r"100,000,000,000 characters of width or precision; the widths and "
                                              r"precisions in a template add up to at most 10,000 characters"),
        # before: accepted, and every critique request padded to ten million characters
        ("Attempt: {response:>10000000}", r"asks for 10,000,000 characters of width or precision"),
        ("{response:.6000} {problem:.6000}", r"\{problem:.6000\} asks for 6,000 characters of width or precision, "
                                             r"which brings the template's widths and precisions to 12,000"),
        ("{response} {score:." + "9" * 5000 + "f}", r"asks for a 5,000-digit number of characters"),
    ],
    ids=["field-as-spec", "field-in-spec", "huge-width", "large-width", "widths-add-up", "5000-digit-precision"],
)
def test_format_specs_with_fields_or_huge_numbers_are_config_errors(host, template, expected):
    with pytest.raises(ConfigError, match=expected):
        build(host, template=template)


def test_format_specs_within_bounds_render(host):
    source = build(host, template="{response:.4000}|{response:*^7}|{score:.3f}|{verdict:>12}")
    problem, rollout, verdict, _ = graded("31", passed=False, score=0.25)
    assert source.template.render(problem, rollout, verdict) == "31|**31***|0.250|   incorrect"


def test_literal_braces_and_format_specs_are_fine(host):
    source = build(host, template="{{json}} score={score:.2f} {verdict!r} {response}")
    problem, rollout, verdict, _ = graded("31", passed=False, score=0.25)
    assert source.template.render(problem, rollout, verdict) == "{json} score=0.25 'incorrect' 31"


def test_every_variable_renders():
    template = CritiqueTemplate(" | ".join(f"{name}={{{name}}}" for name in VARIABLES))
    problem, rollout, verdict, _ = graded("I think 31.", passed=False, answer="31", score=0.0)
    problem = Problem(id="p", prompt=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "sort 31"}], reference="13")
    assert template.render(problem, rollout, verdict) == (
        "problem=sort 31 | response=I think 31. | verdict=incorrect | score=0.0 | reference=13 | answer=31"
    )
    _, rollout, verdict, _ = graded("", passed=True, answer=None, score=1.0)
    structured = Problem(id="q", prompt="add", reference={"calls": [1, 2]})
    assert template.render(structured, rollout, verdict) == (
        'problem=add | response= | verdict=correct | score=1.0 | reference={"calls": [1, 2]} | answer=(none)'
    )
    assert CritiqueTemplate(DEFAULT_TEMPLATE).variables == ["problem", "response", "verdict"]


@pytest.mark.parametrize(
    "option, value, expected",
    [
        ("max_new_tokens", 0, "option 'max_new_tokens' must be a whole number >= 1"),
        ("batch_size", 2.5, "option 'batch_size' must be a whole number >= 1"),
        ("max_chars", 0, "option 'max_chars' must be a whole number >= 1"),
        ("temperature", -1, "option 'temperature' must be a number >= 0"),
        ("temperature", float("nan"), r"option 'temperature' must be a number >= 0, and finite; 0 means greedy \(got nan\)"),
        ("temperature", float("inf"), r"option 'temperature' must be a number >= 0, and finite; 0 means greedy \(got inf\)"),
        ("only_failed", "yes", "option 'only_failed' must be true or false"),
        ("model", "studnet", "'studnet' is neither 'student' nor a local model directory. Did you mean 'student'?"),
        ("model", {"expert": "writer", "option": {}}, "unknown key 'option'. Did you mean 'options'?"),
        ("model", {"expert": "writr"}, "No expert named 'writr' is registered. Did you mean 'writer'?"),
        ("model", {"expert": "self"}, "expert 'self' .from plugin 'distil_core.models.experts'. cannot write text"),
        ("model", 3, "must be 'student', a local model directory or"),
    ],
)
def test_bad_options_are_config_errors(host, option, value, expected):
    with pytest.raises(ConfigError, match=expected):
        build(host, **{option: value})


def test_a_misspelt_option_gets_a_suggestion(host):
    with pytest.raises(ConfigError, match="Unknown option 'max_new_token' .* Did you mean 'max_new_tokens'"):
        build(host, max_new_token=8)
