"""Detectors: plain records in, Findings out (DESIGN.md section 3; the contract is in base.py).

The registry is a literal: detector name -> module. Each module offers NAME, a frozen `Settings`
dataclass (defaults, `problems()` range checks) and `make(settings, context) -> Detector`.
`engine.build_detectors` constructs the enabled ones; a disabled detector is absent, not skipped.
"""

from __future__ import annotations

from typing import Any, Protocol

from agent.detectors import arpwatch, bruteforce, credentials, dnstunnel, lateral, learned, policycheck, scan
from agent.detectors.base import Context, Detector


class DetectorModule(Protocol):
    NAME: str

    @property
    def Settings(self) -> type[Any]: ...  # the module attribute is a class

    def make(self, settings: Any, context: Context) -> Detector: ...


DETECTORS: dict[str, DetectorModule] = {
    scan.NAME: scan,
    bruteforce.NAME: bruteforce,
    credentials.NAME: credentials,
    arpwatch.NAME: arpwatch,
    dnstunnel.NAME: dnstunnel,
    lateral.NAME: lateral,
    learned.NAME: learned,
    policycheck.NAME: policycheck,
}
# Built only when configured ([detectors.learned] or replay --baseline; [detectors.policy_violation]
# policy = FILE or replay --policy): a baseline and a policy are the site's own.
ON_REQUEST: frozenset[str] = frozenset({learned.NAME, policycheck.NAME})
