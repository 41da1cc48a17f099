"""The stall finder of bench/saturation_windows.py: runs of windows far under the median."""

from __future__ import annotations

import pytest

from bench.saturation_windows import stalls


@pytest.mark.parametrize(("windows", "expected"), [
    ([100, 100, 100, 100], []),
    ([100, 0, 0, 400, 100, 100], [{"at_s": 0.25, "length_s": 0.5}]),
    ([100, 100, 100, 10, 100, 0], [{"at_s": 0.75, "length_s": 0.25},
                                   {"at_s": 1.25, "length_s": 0.25}]),
    ([0, 0, 100, 100, 100], [{"at_s": 0.0, "length_s": 0.5}]),
    ([], []),
])
def test_stalls_are_runs_of_windows_under_a_quarter_of_the_median(
        windows: list[float], expected: list[dict[str, float]]) -> None:
    assert stalls(windows, 0.25) == expected
