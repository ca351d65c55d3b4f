"""``hftgate.v1.TuningService`` for any service: the settings the scaler's optimiser may change live.

A service lists its tunable settings as :class:`TunableSetting` (a name as its config names it,
bounds, whether it is integral, a getter and a setter that applies the value at once) and adds
:func:`binding` to its server. Only the suite's control plane may call it: the ``scaler`` and
``admin`` principals (service tokens); an account's API key is refused before the request is
decoded (the auth interceptor: TuningService is not an API-key method), another principal gets
PERMISSION_DENIED. A value outside the bounds, NaN or infinite, or an unknown name is
INVALID_ARGUMENT / NOT_FOUND saying which; nothing is half-applied.

Why live and not a restart: the optimiser keeps a change only when a measured window shows it
helped, so it must be cheap to try and cheap to undo; a restart would measure the warm-up.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import grpc

from hftgate.grpcserver import ServiceBinding
from hftgate.security import ADMIN, SuiteSecret, principal_of
from hftgate.v1 import scaler_pb2, scaler_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = "hftgate.v1.TuningService"
#: Principals that may read and change settings.
CONTROL_PLANE: frozenset[str] = frozenset({"scaler", ADMIN})
#: Longest setting name looked up (names are short identifiers; anything longer is refused).
MAX_NAME_CHARS = 64


@dataclass(frozen=True)
class TunableSetting:
    """One setting a service lets the optimiser change."""

    name: str
    min_value: float
    max_value: float
    get: Callable[[], float]
    #: Applies the value at once (already checked against the bounds and rounded if integral).
    set: Callable[[float], object]
    integral: bool = True

    def message(self) -> scaler_pb2.Tunable:
        return scaler_pb2.Tunable(
            name=self.name, value=float(self.get()), min_value=self.min_value, max_value=self.max_value
        )


class TuningServicer(scaler_pb2_grpc.TuningServiceServicer):
    """Serves a service's :class:`TunableSetting` list to the control plane."""

    def __init__(self, service: str, settings: Iterable[TunableSetting], secret: SuiteSecret) -> None:
        self.service = service
        self.settings: Mapping[str, TunableSetting] = {s.name: s for s in settings}
        self._secret = secret

    async def _setting(self, name: str, context: grpc.aio.ServicerContext) -> TunableSetting:
        principal = principal_of(context, self._secret)
        if principal not in CONTROL_PLANE:
            who = "an API-key caller" if principal is None else f"principal {principal!r}"
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{self.service} settings are for the scaler and admin principals only, not {who}",
            )
        if not name or len(name) > MAX_NAME_CHARS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"name: a setting name of 1 to {MAX_NAME_CHARS} characters"
            )
        setting = self.settings.get(name)
        if setting is None:
            known = ", ".join(sorted(self.settings)) or "none"
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"{self.service} has no tunable setting {name!r} (it has: {known})"
            )
        assert setting is not None
        return setting

    async def GetTunable(
        self, request: scaler_pb2.GetTunableRequest, context: grpc.aio.ServicerContext
    ) -> scaler_pb2.GetTunableResponse:
        setting = await self._setting(request.name, context)
        return scaler_pb2.GetTunableResponse(tunable=setting.message())

    async def SetTunable(
        self, request: scaler_pb2.SetTunableRequest, context: grpc.aio.ServicerContext
    ) -> scaler_pb2.SetTunableResponse:
        setting = await self._setting(request.name, context)
        value = request.value
        if not math.isfinite(value) or not setting.min_value <= value <= setting.max_value:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"value: {setting.name} takes {setting.min_value:g} to {setting.max_value:g}, not {value:g}",
            )
        if setting.integral:
            value = float(round(value))
        before = setting.get()
        setting.set(value)
        log.info("%s: %s %g -> %g (control plane)", self.service, setting.name, before, value)
        return scaler_pb2.SetTunableResponse(tunable=setting.message())


def binding(servicer: TuningServicer) -> ServiceBinding:
    """The server binding that serves ``servicer`` (for ``create_server``)."""
    return ServiceBinding(
        SERVICE_NAME, lambda server: scaler_pb2_grpc.add_TuningServiceServicer_to_server(servicer, server)
    )
