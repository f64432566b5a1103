"""The tiny base's cache key leaves out the options a component declares as run-only, nested ones too."""

from distil_core import PluginHost, hookimpl
from distil_core.training.runtime import base_feedback_key

VERIFIER = {"name": "exact_match", "options": {}}


class Gauge:
    """A feedback source with run-only options at the top and inside a mapping of its own."""

    run_options = frozenset({"workers", ("backends", "remote", "address"), ("backends", "remote", "retries")})

    def __init__(self, workers: int = 1, wording: str = "plain", backends: dict = None):
        self.workers, self.wording, self.backends = workers, wording, backends

    def feedback(self, problem, rollout, verdict, group=()):
        return []


class GaugePlugin:
    @staticmethod
    @hookimpl
    def register_feedback_sources(register):
        register("gauge", Gauge)


def key(**options):
    host = PluginHost(load_entrypoints=False)
    host.register_plugin(GaugePlugin, "gauge")
    return base_feedback_key({"verifier": VERIFIER, "feedback": [{"name": "gauge", "options": options}]}, host)


def test_nested_run_options_are_left_out_and_a_mapping_they_empty_goes_with_them():
    bare = key(wording="plain")
    assert bare["feedback"] == [{"name": "gauge", "options": {"wording": "plain"}}]
    assert key(wording="plain", workers=8, backends={"remote": {"address": "tcp://x:1", "retries": 3}}) == bare


def test_the_other_options_of_a_nested_mapping_stay_in_the_key():
    kept = key(backends={"remote": {"address": "tcp://x:1", "format": "json"}, "local": {"address": "/run/s"}})
    assert kept["feedback"][0]["options"] == {"backends": {"remote": {"format": "json"}, "local": {"address": "/run/s"}}}
    assert kept != key(backends={"remote": {"format": "text"}, "local": {"address": "/run/s"}})


def test_a_value_that_is_not_a_mapping_where_a_path_leads_is_kept_as_it_is():
    assert key(backends=None)["feedback"][0]["options"] == {"backends": None}
    assert key(backends={"remote": "tcp://x:1"})["feedback"][0]["options"] == {"backends": {"remote": "tcp://x:1"}}
    assert key(backends={})["feedback"][0]["options"] == {"backends": {}}  # given empty (not emptied): kept, as before
