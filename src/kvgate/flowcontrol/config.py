"""Flow-control configuration: llm-d's ``flowControl`` section, typed and defaulted.

Both generations of llm-d's EndpointPickerConfig are read (see docs/flow-control.md):

* GIE v1.4/v1.5 (``flowControl{maxBytes, maxRequests, defaultRequestTTL, defaultPriorityBand,
  priorityBands[]}``, top-level ``saturationDetector`` thresholds);
* llm-d-router (2026): also ``noEndpointRequestTTL``, ``defaultNegativePriorityBand``,
  ``usageLimitPolicyPluginRef``, ``saturationDetector.pluginRef`` (inside ``flowControl``, or the
  deprecated top-level one) and ``enableEviction``.

Invariants of a built :class:`FlowControlConfig`: every limit is >= 0 (0 on a global limit means
"no limit"; a band always has both limits > 0), priorities in ``priority_bands`` are unique,
and every policy reference names a registered flow-control plugin type or a declared plugin.
Defaults follow llm-d-router's ``registry/config.go`` and ``controller/config.go``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kvgate.config.documents import describe
from kvgate.config.fields import Problems, check_fields, join_path

#: The feature gate that turns flow control on (llm-d's ``flowcontrol.FeatureGate``).
FEATURE_GATE = "flowControl"
#: llm-d's default fairness id, used when the request carries none (``metadata.DefaultFairnessID``).
DEFAULT_FAIRNESS_ID = "default-flow"

DEFAULT_BAND_MAX_BYTES = 1_000_000_000  # 1 GB, llm-d's defaultPriorityBandMaxBytes
DEFAULT_BAND_MAX_REQUESTS = 5000  # llm-d-router's defaultPriorityBandMaxRequests
DEFAULT_REQUEST_TTL_S = 60.0  # llm-d-router's defaultRequestTTL
DEFAULT_FAIRNESS_POLICY = "global-strict-fairness-policy"
DEFAULT_ORDERING_POLICY = "fcfs-ordering-policy"
DEFAULT_USAGE_LIMIT_POLICY = "static-usage-limit-policy"
DEFAULT_SATURATION_DETECTOR = "utilization-detector"

FAIRNESS_POLICY_TYPES: tuple[str, ...] = (
    "global-strict-fairness-policy",
    "round-robin-fairness-policy",
    "program-aware-fairness",
)
ORDERING_POLICY_TYPES: tuple[str, ...] = ("fcfs-ordering-policy", "edf-ordering-policy")
DETECTOR_TYPES: tuple[str, ...] = ("utilization-detector", "concurrency-detector")
USAGE_LIMIT_POLICY_TYPES: tuple[str, ...] = (
    "static-usage-limit-policy",
    "soft-reflective-ceiling-policy",
)
#: Policies llm-d does not inject under their type names: a reference must name a declared one.
_NOT_INJECTED = frozenset({"program-aware-fairness", "soft-reflective-ceiling-policy"})

_FIELDS = (
    "maxBytes",
    "maxRequests",
    "defaultRequestTTL",
    "noEndpointRequestTTL",
    "defaultPriorityBand",
    "defaultNegativePriorityBand",
    "priorityBands",
    "usageLimitPolicyPluginRef",
    "saturationDetector",
    "enableEviction",
)
_BAND_FIELDS = (
    "priority",
    "maxBytes",
    "maxRequests",
    "fairnessPolicyRef",
    "orderingPolicyRef",
    "defaultRequestTTL",
)
_TEMPLATE_FIELDS = tuple(f for f in _BAND_FIELDS if f != "priority")

# Kubernetes resource.Quantity: a number with an optional binary or decimal suffix.
_QUANTITY = re.compile(
    r"^([+]?[0-9]+(?:\.[0-9]*)?|[+]?\.[0-9]+)([eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$"
)
_SUFFIX = {
    None: 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


@dataclass(frozen=True, slots=True)
class PriorityBandConfig:
    """One priority band (or the template for bands nobody configured).

    Both limits count what is *queued* in the band (as llm-d's ``hasCapacity``); they are > 0.
    The policies are resolved to their plugin types (they take no parameters).
    ``request_ttl_s`` is the band's own queue-wait budget (llm-d's per-band
    ``defaultRequestTTL``; 0 = no TTL), None where the band follows the section's.
    """

    priority: int = 0
    max_bytes: int = DEFAULT_BAND_MAX_BYTES
    max_requests: int = DEFAULT_BAND_MAX_REQUESTS
    fairness_policy: str = DEFAULT_FAIRNESS_POLICY
    ordering_policy: str = DEFAULT_ORDERING_POLICY
    request_ttl_s: float | None = None


@dataclass(frozen=True, slots=True)
class FlowControlConfig:
    """The resolved ``flowControl`` section (present only when the feature gate is on)."""

    max_bytes: int = 0  # global, across bands; 0 = no global byte limit
    max_requests: int = 0  # global, across bands; 0 = no global request limit
    default_request_ttl_s: float = DEFAULT_REQUEST_TTL_S  # 0 = wait until cancelled
    no_endpoint_request_ttl_s: float | None = None  # None = follows default_request_ttl_s
    default_priority_band: PriorityBandConfig = PriorityBandConfig()
    default_negative_priority_band: PriorityBandConfig | None = None  # None = the default band
    priority_bands: tuple[PriorityBandConfig, ...] = ()
    usage_limit_policy_ref: str = DEFAULT_USAGE_LIMIT_POLICY
    saturation_detector_ref: str | None = None  # None = top-level section or the default
    enable_eviction: bool = False

    def band(self, priority: int) -> PriorityBandConfig:
        """The configuration that governs ``priority`` (explicit band, else a template)."""
        for band in self.priority_bands:
            if band.priority == priority:
                return band
        template = self.default_priority_band
        if priority < 0 and self.default_negative_priority_band is not None:
            template = self.default_negative_priority_band
        return PriorityBandConfig(
            priority,
            template.max_bytes,
            template.max_requests,
            template.fairness_policy,
            template.ordering_policy,
            template.request_ttl_s,
        )

    def ttl_s(self, *, pool_empty: bool, band: PriorityBandConfig | None = None) -> float:
        """The queue-wait budget in force: ``noEndpointRequestTTL`` while the pool is empty
        (llm-d-router splits it by whether endpoints exist), else the band's own
        ``defaultRequestTTL``, else the section's."""
        if pool_empty and self.no_endpoint_request_ttl_s is not None:
            return self.no_endpoint_request_ttl_s
        if band is not None and band.request_ttl_s is not None:
            return band.request_ttl_s
        return self.default_request_ttl_s


def parse_quantity(value: Any) -> int | None:
    """A Kubernetes quantity (``100``, ``1k``, ``1Gi``, ``500M``) as a whole number, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float):
        return int(value) if value >= 0 and value.is_integer() else None
    if not isinstance(value, str):
        return None
    m = _QUANTITY.match(value.strip())
    if m is None:
        return None
    number, suffix = float(m.group(1)), m.group(2)
    if suffix is not None and suffix[0] in "eE":
        result = number * 10 ** int(suffix[1:])
    else:
        result = number * _SUFFIX[suffix]
    rounded: int = math.ceil(result)  # as Quantity.Value(): rounded up to a whole number
    return rounded


def parse_flow_control(
    problems: Problems,
    section: Mapping[str, Any],
    plugin_types: Mapping[str, str],
    *,
    path: str = "flowControl",
) -> FlowControlConfig:
    """Check and resolve one ``flowControl`` mapping, one problem per wrong field.

    ``plugin_types`` maps each declared plugin name to its (canonical) type, so that policy
    and detector references can name either a declared plugin or a built-in type.
    """
    check_fields(problems, path, section, _FIELDS)
    max_bytes = _quantity(problems, join_path(path, "maxBytes"), section.get("maxBytes"), 0)
    max_requests = _quantity(
        problems, join_path(path, "maxRequests"), section.get("maxRequests"), 0
    )

    ttl = _duration(problems, path, section, "defaultRequestTTL", DEFAULT_REQUEST_TTL_S)
    no_endpoint_ttl = _duration(problems, path, section, "noEndpointRequestTTL", None)

    default_band = _band(
        problems,
        join_path(path, "defaultPriorityBand"),
        section.get("defaultPriorityBand"),
        plugin_types,
        template=True,
    )
    negative = section.get("defaultNegativePriorityBand")
    negative_band = (
        _band(
            problems,
            join_path(path, "defaultNegativePriorityBand"),
            negative,
            plugin_types,
            template=True,
        )
        if negative is not None
        else None
    )
    bands: list[PriorityBandConfig] = []
    raw_bands = section.get("priorityBands")
    if raw_bands is not None and not isinstance(raw_bands, list):
        problems.add(
            join_path(path, "priorityBands"), f"expected a list, got {describe(raw_bands)}"
        )
        raw_bands = []
    seen: dict[int, int] = {}
    for i, raw in enumerate(raw_bands or []):
        band_path = f"{join_path(path, 'priorityBands')}[{i}]"
        band = _band(problems, band_path, raw, plugin_types, template=False)
        if band.priority in seen and isinstance(raw, dict) and "priority" in raw:
            problems.add(
                f"{band_path}.priority",
                f"duplicate priority {band.priority} (also in priorityBands[{seen[band.priority]}])",
            )
        seen.setdefault(band.priority, i)
        bands.append(band)

    usage_ref = _ref(
        problems,
        join_path(path, "usageLimitPolicyPluginRef"),
        section.get("usageLimitPolicyPluginRef"),
        USAGE_LIMIT_POLICY_TYPES,
        plugin_types,
        "usage limit policy",
    )
    detector_ref = saturation_detector_ref(
        problems,
        join_path(path, "saturationDetector"),
        section.get("saturationDetector"),
        plugin_types,
    )
    eviction = section.get("enableEviction", False)
    if not isinstance(eviction, bool):
        problems.add(
            join_path(path, "enableEviction"), f"expected true or false, got {describe(eviction)}"
        )
        eviction = False
    # true: dispatched sheddable (priority < 0) requests are ended mid-generation with a 429
    # when a higher band is blocked by saturation (kvgate.flowcontrol.eviction)
    return FlowControlConfig(
        max_bytes=max_bytes,
        max_requests=max_requests,
        default_request_ttl_s=DEFAULT_REQUEST_TTL_S if ttl is None else ttl,
        no_endpoint_request_ttl_s=no_endpoint_ttl,
        default_priority_band=default_band,
        default_negative_priority_band=negative_band,
        priority_bands=tuple(bands),
        usage_limit_policy_ref=usage_ref or DEFAULT_USAGE_LIMIT_POLICY,
        saturation_detector_ref=detector_ref,
        enable_eviction=eviction,
    )


def saturation_detector_ref(
    problems: Problems, path: str, value: Any, plugin_types: Mapping[str, str]
) -> str | None:
    """The ``pluginRef`` of a ``saturationDetector: {pluginRef}`` mapping (None if absent)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.add(path, f"expected a mapping with 'pluginRef', got {describe(value)}")
        return None
    check_fields(problems, path, value, ("pluginRef",))
    return _ref(
        problems,
        join_path(path, "pluginRef"),
        value.get("pluginRef"),
        DETECTOR_TYPES,
        plugin_types,
        "saturation detector",
    )


def _ref(
    problems: Problems,
    path: str,
    value: Any,
    types: tuple[str, ...],
    plugin_types: Mapping[str, str],
    what: str,
    *,
    as_type: bool = False,
) -> str | None:
    """Check a plugin reference; returns the name, or its type when ``as_type``."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        problems.add(path, f"expected a plugin name, got {describe(value)}")
        return None
    declared = plugin_types.get(value)
    if declared is not None:
        if declared not in types:
            problems.add(
                path,
                f"plugin {value!r} has type {declared!r}, which is not a {what} "
                f"(expected one of: {', '.join(types)})",
            )
            return None
        return declared if as_type else value
    if value in types and value not in _NOT_INJECTED:
        return value  # llm-d injects the built-in policies under their type names
    declared_ok = [n for n, t in plugin_types.items() if t in types]
    problems.add(
        path,
        f"unknown {what} {value!r} (expected a declared plugin or one of: "
        f"{', '.join([*declared_ok, *(t for t in types if t not in _NOT_INJECTED)])})",
    )
    return None


def _duration(
    problems: Problems, path: str, section: Mapping[str, Any], key: str, default: float | None
) -> float | None:
    """``section[key]`` as a Go duration in seconds (``default`` when absent or wrong)."""
    from kvgate.config.sections import parse_duration

    raw = section.get(key)
    if raw is None:
        return default
    parsed = parse_duration(raw) if isinstance(raw, str) else None
    if parsed is None or parsed < 0:
        problems.add(
            join_path(path, key),
            f"expected a non-negative duration such as '30s' or '0s', got {describe(raw)}",
        )
        return default
    return parsed


def _quantity(problems: Problems, path: str, value: Any, default: int) -> int:
    if value is None:
        return default
    parsed = parse_quantity(value)
    if parsed is None:
        problems.add(
            path,
            f"expected a non-negative quantity such as 100, '1k' or '1Gi', got {describe(value)}",
        )
        return default
    return parsed


def _band(
    problems: Problems,
    path: str,
    value: Any,
    plugin_types: Mapping[str, str],
    *,
    template: bool,
) -> PriorityBandConfig:
    if value is None:
        return PriorityBandConfig()
    if not isinstance(value, dict):
        problems.add(path, f"expected a mapping, got {describe(value)}")
        return PriorityBandConfig()
    check_fields(problems, path, value, _TEMPLATE_FIELDS if template else _BAND_FIELDS)
    priority = 0
    if not template:
        raw = value.get("priority")
        if raw is None:
            problems.add(
                join_path(path, "priority"), "required field is missing; expected an integer"
            )
        elif isinstance(raw, bool) or not isinstance(raw, int):
            problems.add(join_path(path, "priority"), f"expected an integer, got {describe(raw)}")
        else:
            priority = raw
    # 0 means "unset" for band limits: the system default applies (llm-d's applyDefaults).
    max_bytes = _quantity(problems, join_path(path, "maxBytes"), value.get("maxBytes"), 0)
    max_requests = _quantity(problems, join_path(path, "maxRequests"), value.get("maxRequests"), 0)
    fairness = _ref(
        problems,
        join_path(path, "fairnessPolicyRef"),
        value.get("fairnessPolicyRef"),
        FAIRNESS_POLICY_TYPES,
        plugin_types,
        "fairness policy",
        as_type=True,
    )
    ordering = _ref(
        problems,
        join_path(path, "orderingPolicyRef"),
        value.get("orderingPolicyRef"),
        ORDERING_POLICY_TYPES,
        plugin_types,
        "ordering policy",
        as_type=True,
    )
    return PriorityBandConfig(
        priority=priority,
        max_bytes=max_bytes or DEFAULT_BAND_MAX_BYTES,
        max_requests=max_requests or DEFAULT_BAND_MAX_REQUESTS,
        fairness_policy=fairness or DEFAULT_FAIRNESS_POLICY,
        ordering_policy=ordering or DEFAULT_ORDERING_POLICY,
        request_ttl_s=_duration(problems, path, value, "defaultRequestTTL", None),
    )
