"""llm-d's request-control admitters (``AdmitRequest``), run after data preparation."""
