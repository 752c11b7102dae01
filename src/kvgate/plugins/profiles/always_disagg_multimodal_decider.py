"""``always-disagg-multimodal-decider`` (llm-d): the encode stage runs for multimodal requests.

The encode decider of ``disagg-profile-handler`` (``deciders.encode``) in llm-d's E/P/D and
E/PD configurations.

* Parameters: none.
* Decision: True when the chat request carries at least one image, video or audio part
  (``image_url``, ``video_url``, ``audio_url``, ``input_audio``: :attr:`Request.mm_items`,
  parsed once at the edge by kvgate.openai.multimodal); text-only requests skip the encode
  stage. Whatever the decode pick, and also with none (``prefill-first`` stage order).
* State: none.
"""

from __future__ import annotations

from kvgate.plugins.base import Params, PluginContext
from kvgate.scheduling.types import Endpoint, Request

TYPE = "always-disagg-multimodal-decider"


class AlwaysDisaggMultimodalDecider:
    """A :class:`~kvgate.plugins.profiles.deciders.Decider` for the encode stage."""

    type_name = TYPE

    def __init__(self, name: str) -> None:
        self.name = name

    def disaggregate(self, request: Request, decode: Endpoint | None) -> bool:
        return bool(request.mm_items)


def create(name: str, params: Params, ctx: PluginContext) -> AlwaysDisaggMultimodalDecider:
    return AlwaysDisaggMultimodalDecider(name)
