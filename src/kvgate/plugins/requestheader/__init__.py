"""llm-d's request-header processors (``requestcontrol.RequestHeaderProcessor``): plugins that
read a request's headers before admission and record what they find on the request."""

#: The request attribute (``Request.extra`` key) an agent's session identity is stored under;
#: request control makes it the fairness id when no fairness header is sent (llm-d's director).
AGENT_IDENTITY = "agent-identity"
