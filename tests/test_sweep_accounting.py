"""What a sweep command did (normlab.platform.sweep's ledger), a job recorded before anything can raise,
and bad input meaning normlab's own checks only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from normlab.platform.sweep import (
    COMMAND_ENV,
    command_tally,
    note_job,
    noted_once,
    start_command,
    summary_line,
)
from normlab.results import is_bad_input
from tests.helpers import run_in_process


def _job(sweep: Path, num: int, status: str | None) -> Path:
    folder = sweep / str(num)
    folder.mkdir(parents=True)
    if status is not None:
        (folder / "results.json").write_text(json.dumps({"status": status}))
    return folder


def test_the_summary_counts_this_commands_jobs_not_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An earlier command's job in the folder is not this command's; a launched job that left
    no outcome (results.json still `running`, or none) is unrecorded."""
    monkeypatch.delenv(COMMAND_ENV, raising=False)
    _job(tmp_path, 9, "completed")  # an earlier command's
    start_command()
    note_job(tmp_path, 0, _job(tmp_path, 0, "completed"), "launched")
    note_job(tmp_path, 1, _job(tmp_path, 1, "diverged"), "skipped")
    note_job(tmp_path, 2, _job(tmp_path, 2, "running"), "launched")  # killed from outside
    note_job(tmp_path, 3, _job(tmp_path, 3, None), "launched")
    note_job(tmp_path, 4, _job(tmp_path, 4, "completed"), "refused", "another run")
    note_job(tmp_path, 5, _job(tmp_path, 5, "failed"), "launched")
    tally = command_tally(tmp_path)
    assert tally is not None
    assert (tally.launched, tally.skipped, tally.refused, tally.unrecorded) == (4, 1, 1, 2)
    assert tally.jobs == 6 and tally.troubled == 4  # failed, refused, 2 unrecorded
    assert summary_line(tmp_path, tally) == (
        "normlab: sweep finished: 6 jobs: 1 completed, 1 failed, 1 diverged; 4 launched, "
        f"1 skipped as already finished, 1 refused, 2 unrecorded; results in {tmp_path}"
    )
    assert noted_once(tmp_path, 4) and not noted_once(tmp_path, 9)


def test_without_a_ledger_the_folder_is_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(COMMAND_ENV, raising=False)
    _job(tmp_path, 0, "completed")
    _job(tmp_path, 1, "failed")
    note_job(tmp_path, 0, tmp_path / "0", "launched")  # no command: nothing noted
    assert command_tally(tmp_path) is None
    assert summary_line(tmp_path).startswith(
        "normlab: sweep finished: 2 jobs: 1 completed, 1 failed, 0 diverged; results in"
    )


def test_a_bad_value_found_late_is_still_recorded(tmp_path: Path) -> None:
    """`-m virtual_devices=0,1` used to leave job 0 without a results.json (the value was read
    before the record was written) and the summary counted 1 job."""
    with pytest.raises(ValueError, match="virtual_devices must be an int >= 1"):
        run_in_process(["virtual_devices=0", "threads=1", "print_config=false"], tmp_path)
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["status"] == "failed" and record["bad_input"] is True
    assert "virtual_devices must be an int >= 1" in record["error"]


def _raise_inside_a_library() -> None:
    json.loads("{not json")  # json.JSONDecodeError, a ValueError, from the standard library


def test_bad_input_is_only_what_normlabs_own_checks_raise() -> None:
    """A ValueError from a library (the CSV logger's 'dict contains fields not in fieldnames'
    when two processes shared a folder) was recorded bad_input and never retried."""
    from normlab.job.spec import virtual_devices

    with pytest.raises(ValueError) as own:
        virtual_devices(0)
    assert is_bad_input(own.value)
    with pytest.raises(ValueError) as library:
        _raise_inside_a_library()
    assert not is_bad_input(library.value)
    assert not is_bad_input(RuntimeError("a crash"))
