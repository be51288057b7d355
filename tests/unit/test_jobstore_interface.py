"""The job store's interface: the SQLite store implements every method of `JobStorePort` with
the same parameters, so a second backend written against the interface fits the engine."""

from __future__ import annotations

import inspect

from bot.jobstore import JobStorePort
from bot.store import JobStore


def _methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(fn)
        for name, fn in vars(cls).items()
        if inspect.iscoroutinefunction(fn) and not name.startswith("_")
    }


def test_the_sqlite_store_implements_every_method_of_the_interface_alike() -> None:
    interface = _methods(JobStorePort)
    assert len(interface) >= 20
    for name, signature in interface.items():
        implementation = getattr(JobStore, name, None)
        assert implementation is not None, f"JobStore lacks {name}"
        assert inspect.signature(implementation).parameters.keys() == signature.parameters.keys(), name


def test_the_engine_parts_take_the_interface() -> None:
    from bot.actions import ResultActions
    from bot.admission import Admission
    from bot.delivery import Delivery
    from bot.engine import Engine
    from bot.moderation import Moderation
    from bot.runner import Runner

    for part in (Admission, Runner, Delivery, ResultActions, Moderation, Engine):
        assert inspect.signature(part.__init__).parameters["store"].annotation == "JobStorePort", part
