"""bench.http_load's steal reading: what each load run reports of the VM's lost CPU time."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.http_load import cpu_ticks, most_steal, steal_between, steal_text

# The first lines of a real /proc/stat (2 CPUs): user nice system idle iowait irq softirq steal
# guest guest_nice.
PROC_STAT = b"""cpu  4705 150 1120 16250 520 0 75 880 0 0
cpu0 2350 75 560 8125 260 0 40 440 0 0
cpu1 2355 75 560 8125 260 0 35 440 0 0
intr 114930 0 9 0
"""


def test_cpu_ticks_reads_steal_and_the_total_of_the_first_eight_fields(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_bytes(PROC_STAT)
    # guest time is counted in user already, so the total stops at steal.
    assert cpu_ticks(stat) == (880, 4705 + 150 + 1120 + 16250 + 520 + 0 + 75 + 880)


@pytest.mark.parametrize("content", [b"", b"intr 1 2 3\n", b"cpu 1 2 3\n"])
def test_cpu_ticks_is_none_without_a_cpu_line_that_has_steal(
    tmp_path: Path, content: bytes
) -> None:
    stat = tmp_path / "stat"
    stat.write_bytes(content)
    assert cpu_ticks(stat) is None


def test_cpu_ticks_is_none_without_the_file(tmp_path: Path) -> None:
    assert cpu_ticks(tmp_path / "missing") is None


def test_steal_between_is_the_stolen_share_of_the_time_between_readings() -> None:
    assert steal_between((100, 1000), (350, 2000)) == 0.25
    assert steal_between((100, 1000), (100, 3000)) == 0.0


@pytest.mark.parametrize(
    ("before", "after"), [(None, (1, 2)), ((1, 2), None), ((5, 1000), (5, 1000))]
)
def test_steal_between_is_unknown_without_two_readings_apart(
    before: tuple[int, int] | None, after: tuple[int, int] | None
) -> None:
    assert steal_between(before, after) is None


def test_most_steal_is_the_largest_known_share() -> None:
    assert most_steal([0.02, None, 0.29]) == 0.29
    assert most_steal([None]) is None
    assert steal_text(0.287) == "29%"
    assert steal_text(None) == "n/a"


def test_the_machine_running_the_tests_reports_its_own_ticks() -> None:
    if not Path("/proc/stat").exists():
        pytest.skip("no /proc/stat: not Linux")
    first, second = cpu_ticks(), cpu_ticks()
    assert first is not None
    assert second is not None
    assert second[1] >= first[1] >= first[0] >= 0
