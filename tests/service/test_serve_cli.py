"""``evotok serve``'s options: each sets the ``EVOTOK_*`` variable of a Settings field, which the processes it
starts (front ends, runtime process, uvicorn workers) read."""

from __future__ import annotations

from evotok.service.cli import _ENV_OPTIONS, _parser
from evotok.service.settings import Settings


def test_every_option_maps_to_a_settings_field() -> None:
    fields = {f"EVOTOK_{name.upper()}" for name in Settings.model_fields}
    assert set(_ENV_OPTIONS.values()) <= fields
    dests = {a.dest for a in _parser()._actions}
    assert set(_ENV_OPTIONS) <= dests


def test_frontends_option() -> None:
    args = _parser().parse_args(["--frontends", "3"])
    assert args.frontends == 3 and _ENV_OPTIONS["frontends"] == "EVOTOK_FRONTENDS"
    assert Settings.model_fields["frontends"].default == 0  # auto: front ends where there is more than one core
