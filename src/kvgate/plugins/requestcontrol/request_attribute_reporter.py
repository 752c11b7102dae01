"""``request-attribute-reporter`` (llm-d-router): a CEL expression over the response's usage,
reported to Envoy as ext_proc dynamic metadata.

* Behaviour (llm-d-router's ``requestcontrol/requestattributereporter``): when a response
  ends, the CEL variable ``usage`` holds its OpenAI usage as llm-d marshals it -
  ``prompt_tokens``, ``completion_tokens`` and ``total_tokens`` always present (0 when the
  server sent none; every number a CEL ``double``, as protobuf's Struct makes them), and
  ``prompt_tokens_details.cached_tokens`` when the server sent it. If ``condition`` is set and
  does not evaluate to ``true``, nothing is reported. Otherwise ``expression`` must give a
  number; it is truncated to an integer and, unless 0, written as
  ``{namespace: {name: value}}``. An evaluation error (a missing field, ``double + int``) is
  logged and reports nothing, as in llm-d.
* Where it goes: ``kvgate epp`` sets it as ``dynamic_metadata`` on the ext_proc reply that
  ends the response (Envoy's ext_proc filter then holds it for later filters and the access
  log, ``%DYNAMIC_METADATA(envoy.lb:<name>)%``; the namespace must be among the filter's
  ``metadata_options.receiving_namespaces``). ``kvgate serve`` has no Envoy to tell: it writes
  the same mapping into the request's JSON log line as ``dynamic_metadata``.
* Parameters: ``attributes`` - exactly one entry (llm-d's limit) of ``key.namespace``
  (default ``envoy.lb``), ``key.name``, ``expression`` (required) and ``condition``
  (optional). Both expressions are compiled at load: a syntax error fails the config.
* CEL: the ``common-expression-language`` package (cel-rust's bindings) stands in for
  cel-go. It compiles without a type environment, so a type error llm-d's checker would
  reject at load (``usage.prompt_tokens + 1``) is found at evaluation and logged instead.
* **Difference from llm-d:** a request whose model server never answered (connect failure,
  client gone before the response) reports nothing; llm-d only runs the hook on responses.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import cel

from kvgate.errors import PluginParameterError
from kvgate.plugins.base import Params, PluginContext, params_at
from kvgate.scheduling.types import Endpoint, Request, ResponseInfo

TYPE = "request-attribute-reporter"

#: llm-d's default namespace: the one Envoy's load balancers read.
DEFAULT_NAMESPACE = "envoy.lb"

log = logging.getLogger("kvgate.plugins.request_attribute_reporter")


def usage_variable(response: ResponseInfo) -> dict[str, Any]:
    """The CEL ``usage`` of a response, shaped as llm-d's Usage struct marshals it."""
    prompt = float(response.prompt_tokens or 0)
    completion = float(response.completion_tokens or 0)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if response.cached_tokens is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": float(response.cached_tokens)}
    return usage


class RequestAttributeReporter:
    """See the module docstring."""

    type_name = TYPE
    strict_notes = (
        "CEL is compiled without cel-go's type checker: a type error is logged per request "
        "instead of failing the config",
        "under kvgate serve the attribute goes to the request log line (dynamic_metadata), "
        "there being no Envoy",
    )

    def __init__(
        self,
        name: str,
        namespace: str,
        key: str,
        expression: cel.Program,
        condition: cel.Program | None,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.key = key
        self.expression = expression
        self.condition = condition

    def response_complete(
        self, request: Request, response: ResponseInfo, endpoint: Endpoint
    ) -> None:
        if response.status == 0:  # the model server never answered: no usage to report on
            return
        variables = {"usage": usage_variable(response)}
        try:
            if self.condition is not None and self.condition.execute(variables) is not True:
                return
            value = self.expression.execute(variables)
        except Exception as exc:  # cel raises TypeError / KeyError / ValueError / RuntimeError
            log.warning(
                "%s %r: request %s: CEL evaluation failed: %s",
                TYPE,
                self.name,
                request.request_id,
                exc,
            )
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            log.warning(
                "%s %r: request %s: expression gave %r, not a number",
                TYPE,
                self.name,
                request.request_id,
                value,
            )
            return
        reported = int(value)  # llm-d truncates toward zero (int64(double))
        if reported == 0:  # llm-d skips zero values
            return
        if response.metadata is None:
            response.metadata = {}
        response.metadata.setdefault(self.namespace, {})[self.key] = float(reported)


def _compile(field: str, source: str) -> cel.Program:
    try:
        return cel.compile(source)
    except ValueError as exc:
        raise PluginParameterError(field, f"not a valid CEL expression: {exc}") from None


def _attribute(raw: Mapping[str, Any]) -> tuple[str, str, cel.Program, cel.Program | None]:
    entry = Params(raw)
    with params_at("key"):
        key = Params(entry.get_mapping("key"))
        namespace = key.get_str("namespace", "") or DEFAULT_NAMESPACE
        name = key.get_str("name", "")
        if not name:
            raise PluginParameterError("name", "required: the metadata key to report under")
        key.check_unknown()
    source = entry.get_str("expression", "")
    if not source.strip():
        raise PluginParameterError("expression", "required: a CEL expression giving a number")
    expression = _compile("expression", source)
    condition_source = entry.get_str("condition", "")
    condition = _compile("condition", condition_source) if condition_source.strip() else None
    entry.check_unknown()
    return namespace, name, expression, condition


def create(name: str, params: Params, ctx: PluginContext) -> RequestAttributeReporter:
    attributes = params.get_any("attributes")
    if not isinstance(attributes, list) or len(attributes) != 1:
        raise PluginParameterError(
            "attributes", "expected a list of exactly one attribute (llm-d's limit)"
        )
    if not isinstance(attributes[0], Mapping):
        raise PluginParameterError("attributes[0]", "expected a mapping")
    with params_at("attributes[0]"):
        namespace, key, expression, condition = _attribute(attributes[0])
    return RequestAttributeReporter(name, namespace, key, expression, condition)
