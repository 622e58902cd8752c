"""The base of every scenario spec model: immutable, and unknown fields are errors.

It lives apart from config.py so that subsystems with their own scenario sections
(federated, inference) can define their spec models beside their code without a cycle.
"""

from pydantic import BaseModel, ConfigDict


class Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
