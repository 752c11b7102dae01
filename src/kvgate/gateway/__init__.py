"""The OpenAI-compatible HTTP front door (``kvgate serve``, and ``kvgate up``'s gateway).

* :mod:`.app` — the process: ``kvgate serve`` flags -> pool, scraper, scheduler, request
  control -> :class:`~.routes.Gateway`; run until SIGINT/SIGTERM.
* :mod:`.routes` — the route table (inference, models, health, ready, metrics), served by
  :mod:`kvgate.http1`, around
  :class:`kvgate.requestcontrol.control.RequestControl`.
* :mod:`.forward` — attempts in score order, retries before the first byte, the relay.
* :mod:`.upstream` — the keep-alive HTTP/1.1 client to the model servers.
* :mod:`.proxy` — header hygiene; :mod:`.auth` — API keys; :mod:`.settings`; :mod:`.cli`.
"""
