"""Flow-control policies (fairness across flows, ordering within a flow, usage limits), one
per file, named after llm-d's plugin types."""
