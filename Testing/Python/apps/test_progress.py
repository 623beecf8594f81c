"""The terminal's progress: the stage, its count in the stage's own unit, and the time left."""
from PromptRegLib.apps.progress import ProgressBar


def test_a_counted_stage_shows_its_count_unit_and_time_left():
    bar = ProgressBar()
    bar("encoding ct.nrrd", None, 0, 68, "slices")
    bar("encoding ct.nrrd", None, 12, 68, "slices")
    line = str(bar.bar)
    bar.close()
    assert "encoding ct.nrrd: 12/68 slices" in line and "left" in line and "?%/s" not in line


def test_an_uncounted_stage_shows_its_share_of_the_run_and_a_deep_count_keeps_it():
    bar = ProgressBar()
    bar("fitting transform", 0.8)
    assert "80% of the run" in str(bar.bar)
    bar("fitting transform", None)  # a deep stage without a count: nothing to draw
    assert "80% of the run" in str(bar.bar)
    bar.close()


def test_quiet_draws_nothing(capsys):
    bar = ProgressBar(quiet=True)
    bar("encoding", None, 1, 2, "slices")
    assert bar.bar is None and capsys.readouterr().err == ""
