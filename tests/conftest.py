"""Shared fixtures: one export per catalog entry per test session (exports take seconds)."""

from __future__ import annotations

import warnings

import pytest

from exportable import catalog


class ExportCache:
    def __init__(self) -> None:
        self._models: dict[str, object] = {}

    def __call__(self, name: str):
        if name not in self._models:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._models[name] = catalog.get(name).export()
        return self._models[name]


@pytest.fixture(scope="session")
def exported() -> ExportCache:
    return ExportCache()
