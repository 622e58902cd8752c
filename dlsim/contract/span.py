"""What a device did: the record every simulator writes and results and reports read.

It lives at the bottom of the layers, beside the program IR (what a device must do), so that
the engine and each kind's own simulator can write spans without importing the results layer
that reads them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, unsafe_hash=True)
class Span:
    """One interval on one device stream: a kernel, a collective, or a wait for peers.

    ``category`` is one of 'compute', 'comm' (a collective moving data) or 'wait' (the
    stream has reached a collective whose peers have not all arrived); ``role`` is the
    engine op's (``dlsim.contract.program.Role``), empty where another simulator made it.
    Never changed once made; not frozen because a run makes hundreds of thousands, and a
    frozen dataclass takes four times as long to build.
    """

    device: int
    stream: str
    name: str
    category: str
    start_s: float
    end_s: float
    role: str = ""

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s
