"""Kubernetes: InferencePool endpoint discovery and ``kvgate render``.

Modules: :mod:`.inferencepool` (pool and pod JSON -> endpoints, pure), :mod:`.discovery`
(list + watch through ``kubernetes.aio``), :mod:`.render` (LLMInferenceService -> manifests),
:mod:`.cli` (``kvgate render``). Nothing is imported here: the ``kubernetes`` package is
only needed when discovery runs.
"""
