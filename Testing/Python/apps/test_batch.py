"""``promptreg batch``: a 4-row cohort from the shared 2D CT pair on a 2-worker Dask cluster.

Two good rows share the fixed slice (the second moving image is a re-stored copy of the first: flipped column
axis, same physical image), one names an unreadable file, one a click outside the image. Cheap per-row options
(one click, affine, no auto pairs) and the session's embedding cache keep it within the CI budget.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

OUTPUTS = {"fixed_rois.seg.nrrd", "moving_rois.seg.nrrd", "prompts_x.mrk.json", "prompts_y.mrk.json",
           "transform.h5", "affine.tfm", "warped_moving.nrrd", "report.json", "pairs.png"}
CHEAP = {"auto_pairs": "0", "warps": "0", "transform": "affine", "feature_weight": "0"}
LEFT_LUNG = "-315.0,-399.2"
GOOD = ("follow_up", "restored")


def restored_copy(path: Path, target: Path) -> None:
    """The same physical image stored with its column axis reversed (direction and origin changed to match)."""
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)[:, ::-1]
    copy = sitk.GetImageFromArray(array)
    copy.SetSpacing(image.GetSpacing())
    direction = np.array(image.GetDirection()).reshape(2, 2)
    direction[:, 0] *= -1
    copy.SetDirection(direction.ravel().tolist())
    copy.SetOrigin(image.TransformIndexToPhysicalPoint((image.GetSize()[0] - 1, 0)))
    sitk.WriteImage(copy, str(target))


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory, data_dir, cache_dir) -> Path:
    folder = tmp_path_factory.mktemp("cohort")
    ct = data_dir / "ctchest4"
    restored_copy(ct / "pair2d_moving.nrrd", folder / "moving_restored.nrrd")
    (folder / "broken.nrrd").write_text("not an image\n")
    fixed, moving = str(ct / "pair2d_fixed.nrrd"), str(ct / "pair2d_moving.nrrd")
    labels = {"fixed_labels": str(ct / "pair2d_fixed_labels.nii.gz"),
              "moving_labels": str(ct / "pair2d_moving_labels.nii.gz")}
    rows = [{"id": "follow_up", "fixed": fixed, "moving": moving, "prompts": LEFT_LUNG, **CHEAP, **labels},
            {"id": "restored", "fixed": fixed, "moving": "moving_restored.nrrd", "prompts": LEFT_LUNG, **CHEAP},
            {"id": "unreadable", "fixed": fixed, "moving": "broken.nrrd", "prompts": LEFT_LUNG, **CHEAP},
            {"id": "outside", "fixed": fixed, "moving": moving, "prompts": "-3150.0,-399.2", **CHEAP}]
    path = folder / "pairs.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["id", "fixed", "moving", "prompts", *CHEAP, *labels])
        writer.writeheader()
        writer.writerows(rows)
    return path


def summary(output: Path) -> dict[str, dict]:
    return {r["id"]: r for r in json.loads((output / "summary.json").read_text())["pairs"]}


def assert_complete(output: Path) -> None:
    for pair_id in GOOD:
        assert {p.name for p in (output / pair_id).iterdir()} == OUTPUTS, pair_id
    assert not list(output.glob(".promptreg-*")), "a staging folder was left behind"
    assert not (output / "unreadable").exists() and not (output / "outside").exists()


def assert_scores_are_the_written_transforms(record: dict, folder: Path, pairs: Path) -> None:
    """The summary's Dice (after and before) are those of the written transform and of the identity."""
    from PromptRegLib.transform.metrics import dice_per_label, warp_labels

    with open(pairs) as handle:
        row = next(r for r in csv.DictReader(handle) if r["id"] == record["id"])
    fixed, moving = sitk.ReadImage(row["fixed_labels"]), sitk.ReadImage(row["moving_labels"])
    for transform, key in ((sitk.ReadTransform(str(folder / "transform.h5")), "dice"), (None, "dice_before")):
        expected = dice_per_label(sitk.GetArrayFromImage(fixed), warp_labels(moving, fixed, transform))
        assert record[key] == pytest.approx({str(k): v for k, v in expected.items()})
    assert record["dice"] != record["dice_before"]


def batch_command(pairs: Path, output: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "PromptRegLib.apps.cli", "batch", str(pairs), "-o", str(output),
                           "--workers", "2", "--quiet"], capture_output=True, text=True, timeout=600)


def test_batch_registers_the_good_rows_records_the_bad_ones_and_resumes(pairs_csv, tmp_path):
    output = tmp_path / "out"
    first = batch_command(pairs_csv, output)
    assert first.returncode == 1, first.stderr
    assert "unreadable (exit 3)" in first.stderr and "outside (exit 4)" in first.stderr
    records = summary(output)
    assert [records[i]["status"] for i in GOOD] == ["done", "done"]
    assert records["unreadable"]["exit_code"] == 3 and "broken.nrrd" in records["unreadable"]["message"]
    assert records["outside"]["exit_code"] == 4 and "outside" in records["outside"]["message"]
    assert_complete(output)
    assert_scores_are_the_written_transforms(records["follow_up"], output / "follow_up", pairs_csv)
    assert records["follow_up"]["pairs_used"] == 1 and records["follow_up"]["peak_mb"] > 100
    with open(output / "summary.csv") as handle:
        assert [row["id"] for row in csv.DictReader(handle)] == ["follow_up", "restored", "unreadable", "outside"]
    assert (output / "overview.png").stat().st_size > 10_000

    # the re-stored copy is the same physical image: the same transform, to well under a pixel (3 mm)
    transforms = [sitk.ReadTransform(str(output / i / "transform.h5")) for i in GOOD]
    points = [(-315.0, -399.2), (-461.2, -399.2), (-351.5, -527.2)]
    moved = [np.array([t.TransformPoint(p) for p in points]) for t in transforms]
    assert np.abs(moved[0] - moved[1]).max() < 1.0

    written = {i: (output / i / "report.json").stat().st_mtime_ns for i in GOOD}
    second = batch_command(pairs_csv, output)
    assert "nothing to do" in second.stdout, second.stdout + second.stderr
    assert {i: (output / i / "report.json").stat().st_mtime_ns for i in GOOD} == written
    assert summary(output)["outside"]["exit_code"] == 4


def test_a_worker_killed_while_writing_a_pair_leaves_no_partial_folder(pairs_csv, tmp_path):
    """A worker process is killed (SIGKILL) while a pair's outputs are being staged: Dask re-runs the pair on
    another worker; every good pair ends complete, the killed attempt's staging folder is gone."""
    import dask
    from distributed import Client, LocalCluster

    from PromptRegLib.apps.batch import run_batch
    from PromptRegLib.apps.batch.run import local_cluster_config

    output = tmp_path / "out"
    with dask.config.set(local_cluster_config(threads=1)):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    killed: list[str] = []
    outcome: dict = {}
    batch = threading.Thread(target=lambda: outcome.update(
        records=run_batch(pairs_csv, output, scheduler=cluster.scheduler_address, threads_per_worker=1, quiet=True,
                          say=lambda *_: None)))
    try:
        batch.start()
        while batch.is_alive() and not killed:
            staging = [p.name for p in output.glob(".promptreg-*")] if output.is_dir() else []
            for worker, keys in client.processing().items():
                ids = [str(k)[len("register-"):].rsplit("-", 1)[0] for k in keys if str(k).startswith("register-")]
                writing = [i for i in ids if any(name.startswith(f".promptreg-{i}-") for name in staging)]
                if writing:
                    pid = client.run(os.getpid, workers=[worker])[worker]
                    os.kill(pid, 9)
                    killed.append(writing[0])
                    break
            time.sleep(0.01)
        batch.join(timeout=600)
    finally:
        client.close()
        cluster.close()
    assert killed, "no worker was caught writing a pair's outputs"
    records = {r["id"]: r for r in outcome["records"]}
    assert [records[i]["status"] for i in GOOD] == ["done", "done"]
    assert_complete(output)


@pytest.mark.parametrize("table, complaint", [
    ("id,fixed\na,f.nrrd\n", "lacks the column(s) moving"),
    ("id,fixed,moving,colour\na,f.nrrd,m.nrrd,red\n", "unknown column(s) colour"),
    ("id,fixed,moving\na,f.nrrd,m.nrrd\na,f.nrrd,n.nrrd\n", "already used on line 2"),
    ("id,fixed,moving\n../up,f.nrrd,m.nrrd\n", "cannot name an output folder"),
    ("id,fixed,moving\n", "no pairs"),
])
def test_a_table_that_cannot_be_used_stops_before_anything_runs(tmp_path, table, complaint):
    from PromptRegLib.apps.batch import read_pairs
    from PromptRegLib.apps.batch.table import PairsTableError

    (tmp_path / "pairs.csv").write_text(table)
    with pytest.raises(PairsTableError, match=complaint.replace("(", r"\(").replace(")", r"\)")) as raised:
        read_pairs(tmp_path / "pairs.csv")
    assert raised.value.exit_code == 2


def test_rows_resolve_paths_beside_the_table_and_keep_quoted_clicks(tmp_path):
    from PromptRegLib.apps.batch import read_pairs
    from PromptRegLib.apps.batch.task import options_of, prompts_of
    from PromptRegLib.pipeline.options import RegistrationOptions

    (tmp_path / "pairs.csv").write_text('id,fixed,moving,prompts,auto_pairs,transform\n'
                                        's01,atlas.nrrd,scans/s01.nrrd,"1,2,3;4,5,6",,affine\n'
                                        's02,atlas.nrrd,scans/s02.nrrd,,,\n')
    first, second = read_pairs(tmp_path / "pairs.csv")
    assert first.fixed == str(tmp_path / "atlas.nrrd") and first.moving == str(tmp_path / "scans" / "s01.nrrd")
    points, pixels = prompts_of(first)
    assert [p.tolist() for p in points] == [[1, 2, 3], [4, 5, 6]] and pixels == []
    assert options_of(first).fit.transform == "affine" and options_of(first).pairs.auto_pairs is None
    assert options_of(second) == RegistrationOptions()  # no options: the defaults (no clicks: automatic pairs)
    assert first.fingerprint() != second.fingerprint()


def test_a_large_cohort_is_summarised_as_distributions(tmp_path):
    from PromptRegLib.apps.batch.summary import MAX_BARS, read_summary, write_summary

    rng = np.random.default_rng(0)
    records = [{"id": f"s{i:03d}", "status": "done" if i % 7 else "failed", "exit_code": 0 if i % 7 else 7,
                "seconds": float(rng.uniform(20, 90)), "dice_mean": float(rng.uniform(0.7, 0.9)),
                "dice_mean_before": float(rng.uniform(0.5, 0.7))} for i in range(3 * MAX_BARS)]
    write_summary(tmp_path, records, {"workers": 2, "wall_s": 1234.0})
    assert read_summary(tmp_path)["s007"]["exit_code"] == 7
    with open(tmp_path / "summary.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 3 * MAX_BARS
    height = sitk.ReadImage(str(tmp_path / "overview.png")).GetSize()[1]
    assert height < 600                          # distributions, not one bar per pair
