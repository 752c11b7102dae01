"""``kvgate explain``: why the scheduler would pick an endpoint for a request, without routing it.

:mod:`.dryrun` scores a request with the running scheduler and leaves no trace
(``POST /debug/explain`` on the gateway and the EPP's metrics port serve it through
:mod:`.route`); :mod:`.cli` asks a running front door and renders the answer.
"""

from kvgate.explain.dryrun import explain_request, frozen_plugin_state

__all__ = ["explain_request", "frozen_plugin_state"]
