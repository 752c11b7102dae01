"""llm-d's data-layer plugins: sources that gather endpoint data and extractors that read it.

kvgate's data layer is its scraper (:mod:`kvgate.endpoints.scrape`) and its endpoint pool:
these plugins carry the settings that llm-d's ``dataLayer`` section gives them, and
:mod:`kvgate.config.datalayer` turns the wired sources and extractors into the scraper's
settings (:class:`kvgate.config.datalayer.DataLayerConfig`).
"""
