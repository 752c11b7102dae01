"""The test plugins of GIE's conformance suite (its ``conformance/resources/base.yaml`` EPP
config): the request picks its endpoint by header and the response names the one that served
it, so the suite can check routing end to end. They act as in llm-d-router; use them only for
conformance runs."""
