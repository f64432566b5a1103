"""DistIL plugin: the ``api`` expert — any model behind the openai SDK or litellm.

    expert: {name: api, options: {model: gpt-4o-mini}}
    expert: {name: api, options: {api_base: http://127.0.0.1:8000/v1, model: tiny, access: auto}}

See :mod:`distil_api_expert.expert` for the access levels and docs/plugins/api-expert.md for
every option. Importing this module is cheap: openai, litellm and torch load when first used.
"""

from distil_core import hookimpl

from .expert import ApiExpert

__version__ = "0.1.0"
__all__ = ["ApiExpert", "register_experts"]


@hookimpl
def register_experts(register):
    register("api", ApiExpert, description="A model behind the openai SDK or litellm (prompt scoring > top-k > text).")
