"""The base of every scenario spec model: immutable, and unknown fields are errors.

It lives apart from scenario.py so that the modules of sections with their own file
(federated, inference, sync) can define their spec models without an import cycle.
"""

from pydantic import BaseModel, ConfigDict


class Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
