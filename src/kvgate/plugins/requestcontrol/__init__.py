"""Request-control plugins that are not scheduling steps (llm-d-router's
``framework/plugins/requestcontrol``): response reporters and candidate screeners."""
