"""``disaggregatedset-rollout-screener`` (llm-d-router): during a DisaggregatedSet rollout, a
request's prefill and decode endpoints come from one revision.

* Where: a Screener (:class:`kvgate.plugins.base.Screener`): request control runs it once per
  request after admission and before every profile, so no filter, scorer or picker can pair
  revisions; nothing left is a 503. It is declared in ``plugins`` only (llm-d: not in a
  profile).
* Revision gating (``revisionGating.mode`` ``sum`` / ``max-role``): from the endpoints in
  rotation that match ``scope.labelSelector`` and carry both the revision and the role label,
  count each revision's endpoints per role. A revision missing any of
  ``requireRoles.values`` gets share 0. ``sum``: a revision's weight is its count over the
  required roles; ``max-role``: the required role with the largest total over the covered
  revisions (ties: the first listed) and each revision's count of it. A request keeps only
  candidates of a revision with a share above 0 and, unless a strict header selector has a
  value, of one revision drawn by weight (revisions in name order over one uniform draw, as
  llm-d). ``disabled``: no gating.
* Header selectors (``headerSelectors``): a ``strict`` one whose request header has a value
  keeps only candidates whose ``labelKey`` label equals it (none: 503, never another
  revision); ``prefer`` ones are left to a ``header-label-affinity-scorer``. Every selector
  stamps its header on the response with the serving endpoint's label when the model
  server's response headers arrive (a ResponseHeaderProcessor: streams included, both doors).
* Parameters: ``scope.labelSelector`` (required), ``headerSelectors`` (``name``,
  ``headerName``, ``labelKey``, ``mode`` strict|prefer; names and headers unique),
  ``revisionGating`` (required: ``mode`` sum|max-role|disabled, ``requireRoles.values`` for
  sum and max-role, ``revisionLabelKey`` = ``disaggregatedset.x-k8s.io/revision``,
  ``roleLabelKey`` = ``disaggregatedset.x-k8s.io/role``). Unknown fields are errors.
* **Differs from llm-d:** kvgate counts endpoints in rotation (ranks; one per pod unless data
  parallel), not Ready Pods from Kubernetes notifications, and recounts on each request;
  llm-d's two ``llm_d_epp_disaggregatedset_*`` series are not exported.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvgate.errors import PluginParameterError
from kvgate.plugins.base import Params, PluginContext, params_at
from kvgate.plugins.filters.label_selector_filter import Requirement, parse_selector
from kvgate.scheduling.types import Endpoint, Request

TYPE = "disaggregatedset-rollout-screener"

DEFAULT_REVISION_LABEL = "disaggregatedset.x-k8s.io/revision"
DEFAULT_ROLE_LABEL = "disaggregatedset.x-k8s.io/role"
MODES = ("sum", "max-role", "disabled")


@dataclass(frozen=True, slots=True)
class HeaderSelector:
    name: str
    header: str  # lower-cased
    label_key: str
    strict: bool  # False: prefer (stamped only)


@dataclass(frozen=True, slots=True)
class Gating:
    mode: str  # sum | max-role
    roles: tuple[str, ...]  # required, in the order given (max-role's tie-break)
    revision_label: str
    role_label: str

    def shares(self, counts: Mapping[str, Mapping[str, int]]) -> dict[str, float]:
        """Revision -> share of traffic (0 for a revision missing a required role)."""
        covered = {r: c for r, c in counts.items() if all(c.get(role, 0) for role in self.roles)}
        if self.mode == "max-role":
            dominant = max(
                self.roles, key=lambda role: sum(c.get(role, 0) for c in covered.values())
            )
            weights = {r: c.get(dominant, 0) for r, c in covered.items()}
        else:
            weights = {r: sum(c.get(role, 0) for role in self.roles) for r, c in covered.items()}
        total = sum(weights.values())
        return {r: (weights.get(r, 0) / total if total else 0.0) for r in counts}


def pick_weighted(shares: Mapping[str, float], draw: float) -> str:
    """One revision by share: revisions in name order over ``draw`` in [0, 1)."""
    total = sum(shares.values())
    if not total:
        return ""
    ordered = sorted(shares)
    x, cumulative = draw * total, 0.0
    for revision in ordered:
        cumulative += shares[revision]
        if x < cumulative:
            return revision
    return ordered[-1]


class DisaggregatedSetRolloutScreener:
    """See the module docstring."""

    type_name = TYPE
    strict_notes = (
        "revision coverage counts endpoints in rotation (ranks), not Ready Pods from "
        "Kubernetes notifications",
        "llm_d_epp_disaggregatedset_* series are not exported",
    )

    def __init__(
        self,
        name: str,
        scope: Sequence[Requirement],
        selectors: Sequence[HeaderSelector],
        gating: Gating | None,
        rng: random.Random,
    ) -> None:
        self.name = name
        self.scope = tuple(scope)
        self.selectors = tuple(selectors)
        self.strict = tuple(s for s in selectors if s.strict)
        self.gating = gating
        self.rng = rng

    def revision_counts(self, ready: Sequence[Endpoint]) -> dict[str, dict[str, int]]:
        """Revision -> role -> endpoints in rotation, within the scope."""
        assert self.gating is not None
        rev_key, role_key = self.gating.revision_label, self.gating.role_label
        counts: dict[str, dict[str, int]] = {}
        for endpoint in ready:
            labels = endpoint.labels
            revision, role = labels.get(rev_key), labels.get(role_key)
            if revision and role and all(r.matches(labels) for r in self.scope):
                per_role = counts.setdefault(revision, {})
                per_role[role] = per_role.get(role, 0) + 1
        return counts

    def screen(
        self, request: Request, endpoints: Sequence[Endpoint], ready: Sequence[Endpoint]
    ) -> list[Endpoint]:
        current = list(endpoints)
        gating = self.gating
        if gating is not None:
            shares = gating.shares(self.revision_counts(ready))
            key = gating.revision_label
            seen = {e.labels.get(key, "") for e in current}
            allowed = {r: shares[r] for r in seen if shares.get(r, 0.0) > 0}
            pinned = any(request.headers.get(s.header) for s in self.strict)
            chosen = "" if pinned else pick_weighted(allowed, self.rng.random())
            current = [
                e
                for e in current
                if e.labels.get(key, "") in allowed and (not chosen or e.labels.get(key) == chosen)
            ]
        for selector in self.strict:
            wanted = request.headers.get(selector.header)
            if wanted and current:
                current = [e for e in current if e.labels.get(selector.label_key) == wanted]
        return current

    def response_header(
        self, request: Request, endpoint: Endpoint, headers: dict[str, str]
    ) -> None:
        for selector in self.selectors:
            value = endpoint.labels.get(selector.label_key)
            if value:
                headers[selector.header] = value


def _mapping(value: Any, field: str) -> Params:
    if value is None:
        return Params({})
    if not isinstance(value, Mapping):
        raise PluginParameterError(field, "expected a mapping")
    return Params(value)


def _selectors(raw: Any) -> list[HeaderSelector]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise PluginParameterError("headerSelectors", "expected a list")
    out: list[HeaderSelector] = []
    for i, entry in enumerate(raw):
        with params_at(f"headerSelectors[{i}]"):
            params = _mapping(entry, "")
            fields = {k: params.get_str(k, "") for k in ("name", "headerName", "labelKey", "mode")}
            for key, value in fields.items():
                if not value:
                    raise PluginParameterError(key, "required")
            if fields["mode"] not in ("strict", "prefer"):
                raise PluginParameterError(
                    "mode", f"expected strict or prefer, got {fields['mode']!r}"
                )
            params.check_unknown()
        header = fields["headerName"].lower()
        if any(other.name == fields["name"] for other in out):
            raise PluginParameterError(f"headerSelectors[{i}].name", "duplicate name")
        if any(other.header == header for other in out):
            raise PluginParameterError(f"headerSelectors[{i}].headerName", "duplicate headerName")
        out.append(
            HeaderSelector(fields["name"], header, fields["labelKey"], fields["mode"] == "strict")
        )
    return out


def _gating(raw: Any) -> Gating | None:
    if raw is None:
        raise PluginParameterError("revisionGating", "required (mode: sum, max-role or disabled)")
    with params_at("revisionGating"):
        params = _mapping(raw, "")
        # first, so a misspelt field (the wide-ep-lws guide's requiredRoles) is named as such
        params.check_unknown("mode", "requireRoles", "revisionLabelKey", "roleLabelKey")
        mode = params.get_str("mode", "")
        if mode not in MODES:
            raise PluginParameterError("mode", f"expected one of {', '.join(MODES)}, got {mode!r}")
        revision_label = params.get_str("revisionLabelKey", "") or DEFAULT_REVISION_LABEL
        role_label = params.get_str("roleLabelKey", "") or DEFAULT_ROLE_LABEL
        roles: list[str] = []
        if params.has("requireRoles") or mode != "disabled":
            with params_at("requireRoles"):
                require = _mapping(params.get_any("requireRoles"), "")
                roles = require.get_str_list("values")
                require.check_unknown()
            if mode != "disabled" and not roles:
                raise PluginParameterError(
                    "requireRoles.values", f"at least one role is required with mode {mode}"
                )
            if any(not r for r in roles) or len(set(roles)) != len(roles):
                raise PluginParameterError(
                    "requireRoles.values", "roles must be non-empty and unique"
                )
        params.check_unknown()
    if mode == "disabled":
        return None
    return Gating(mode, tuple(roles), revision_label, role_label)


def create(name: str, params: Params, ctx: PluginContext) -> DisaggregatedSetRolloutScreener:
    with params_at("scope"):
        scope_params = _mapping(params.get_any("scope"), "")
        selector = scope_params.get_str("labelSelector", "")
        if not selector.strip():
            raise PluginParameterError("labelSelector", "required: the Pods this rollout covers")
        try:
            scope = parse_selector(selector)
        except ValueError as exc:
            raise PluginParameterError(
                "labelSelector", f"not a valid label selector: {exc}"
            ) from None
        scope_params.check_unknown()
    selectors = _selectors(params.get_any("headerSelectors"))
    gating = _gating(params.get_any("revisionGating"))
    return DisaggregatedSetRolloutScreener(name, scope, selectors, gating, ctx.rng)
