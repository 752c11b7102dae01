"""llm-d's test doubles, kept so llm-d's own test configurations load and run unchanged.

llm-d registers these types only inside its own tests (``pkg/epp/config/loader``'s
configloader tests, ``test/integration/epp``'s harness); they are no part of a deployable EPP.
kvgate registers them like any plugin and makes each act as its llm-d counterpart does:

* ``test-one`` (filter: keeps every endpoint), ``test-two`` (scorer: scores every endpoint 0),
  ``test-picker`` (picks nothing), ``test-profile-handler`` (runs no profile, then fails the
  cycle), ``test-source`` / ``test-extractor`` (a data source that gathers nothing and its
  extractor): a configuration of them loads, and every request it schedules fails, as in llm-d.
* ``mock-metrics-source``: endpoint metrics from its parameters instead of ``/metrics``.
* feature gate ``test-feature-gate``: accepted, turns nothing on (llm-d's tests register it).

Use them to test configurations and tooling, never to serve traffic.
"""

#: What ``config check --strict`` says of every test double.
STRICT_NOTES = (
    "a test double: llm-d registers it only inside its own tests; llm-d's deployable router "
    "rejects the type",
)
