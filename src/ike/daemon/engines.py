"""The manager's EngineFactory over the real engines: IKEv1 (ike.proto.v1) and IKEv2 (ike.proto.v2).

Both packages offer `demux(data)` and an engine class with the constructors
`initiate(phase1, children, policies, settings, local, remote, now)` and
`respond(dg, policies, settings, now)`. The version is read from the header's version byte
(offset 17: major version in the high nibble), so each datagram goes to one demux only.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from ike.daemon.policies import IndexedPolicies
from ike.policy import Phase1Tunnel, Phase2Tunnel
from ike.proto.api import Address, Datagram, Demux, Engine, EngineSettings, Event

log = logging.getLogger("ike.daemon.engines")

_CLASSES = {1: ("ike.proto.v1", "Ikev1Engine"), 2: ("ike.proto.v2", "Ikev2Engine")}


class EngineUnavailable(RuntimeError):
    pass


class RealEngines:
    def __init__(self, policies: IndexedPolicies, settings: EngineSettings | None = None) -> None:
        self.policies = policies
        self.settings = settings or EngineSettings()
        self._mods: dict[int, Any] = {}

    def preload(self) -> None:
        """Import both engines now, at daemon start, so the first activation or the first peer
        does not wait for the imports (about a second on a small machine)."""
        for version in _CLASSES:
            try:
                self._module(version)
            except EngineUnavailable:
                pass  # reported when that version is first needed

    def set_policies(self, policies: IndexedPolicies) -> None:
        # Existing engines keep the view they started with; new negotiations see the new one.
        self.policies = policies

    def _module(self, version: int) -> Any:
        mod = self._mods.get(version)
        if mod is None:
            name, cls = _CLASSES[version]
            try:
                mod = importlib.import_module(name)
            except ImportError as e:
                raise EngineUnavailable(f"the IKEv{version} engine cannot be loaded: {e}") from None
            if not hasattr(mod, cls) or not hasattr(mod, "demux"):
                raise EngineUnavailable(f"the IKEv{version} engine is not available in this installation")
            self._mods[version] = mod
        return mod

    def demux(self, data: bytes) -> Demux | None:
        if len(data) < 28:
            return None
        version = data[17] >> 4
        if version not in _CLASSES:
            return None
        try:
            mod = self._module(version)
        except EngineUnavailable:
            return None
        result: Demux | None = mod.demux(data)
        return result

    def initiate(
        self,
        phase1: Phase1Tunnel,
        children: list[Phase2Tunnel],
        local: Address,
        remote: Address,
        now: float,
        initial_contact: bool = True,
    ) -> tuple[Engine, list[Phase2Tunnel]]:
        version = phase1.policy.version
        cls = getattr(self._module(version), _CLASSES[version][1])
        engine: Engine = cls.initiate(
            phase1, list(children), self.policies, self.settings, local, remote, now, initial_contact=initial_contact
        )
        # Both engines queue every child given to them behind phase 1 (IKEv2 puts the first in
        # IKE_AUTH, the rest in CREATE_CHILD_SA exchanges).
        return engine, list(children)

    def respond(self, version: int, dg: Datagram, now: float) -> tuple[Engine | None, list[Datagram], list[Event]]:
        if version not in _CLASSES:
            return None, [], []
        mod = self._module(version)
        cls = getattr(mod, _CLASSES[version][1])
        stateless_cls = getattr(mod, "StatelessOutput", None)
        if stateless_cls is None:
            engine: Engine | None = cls.respond(dg, self.policies, self.settings, now)
            return engine, [], []
        out = stateless_cls()
        engine = cls.respond(dg, self.policies, self.settings, now, out)
        return engine, list(out.datagrams), list(out.events)
