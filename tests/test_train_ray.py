"""A real Ray Train run (TorchTrainer, 2 CPU workers, gloo): checkpoints, resume, export."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from nucflow.errors import TrainingError
from nucflow.models import load_model
from nucflow.training import DataConfig, LossConfig, NetworkConfig, OptimConfig, TrainConfig, train
from nucflow.training._loop import STATE_FILE, load_state
from nucflow.training._train import RUN_NAME

TINY = TrainConfig(
    network=NetworkConfig(ngf=4, depth=3, norm="batch", dropout=0.5, dropout_blocks=1, ndf=4),
    data=DataConfig(mpp=1.0, crop=32, batch_size=4, tile_mpp=0.5, mask_mpp=0.5),
    loss=LossConfig(pseudo=1.0, pseudo_steps=1), optim=OptimConfig(ema=0.5),
    max_steps=3, checkpoint_every=2, log_every=1,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_data, ray_local):
    out = tmp_path_factory.mktemp("run")
    kwargs = dict(tiles=[shared_data / "ihc/regions"], masks=[shared_data / "masks/monuseg"],
                  out=out, workers=2)
    first = train(config=TINY, **kwargs)
    return out, kwargs, first


def _rows(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_run_writes_checkpoints_csv_and_a_loadable_model(run) -> None:
    out, _, result = run
    steps = sorted(p.name for p in (out / "checkpoints" / RUN_NAME).glob("step_*"))
    assert steps == ["step_00000002", "step_00000003"]
    rows = _rows(out / "losses.csv")
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    assert rows[0]["pseudo"] and not rows[0]["gan_s"] and rows[2]["gan_s"] and rows[2]["d_s"]
    assert result.curves.stat().st_size > 1000
    model = load_model(result.model_path)
    assert model.card.steps in (2, 3) and model.card.mpp == 1.0 and model.card.tile_size == 32
    seg = model.build()
    assert seg(torch.rand(1, 3, 32, 32)).shape == (1, 1, 32, 32)
    chosen = json.loads((out / "selection.json").read_text())["chosen"]
    assert chosen == result.checkpoint
    state = load_state(out / "checkpoints" / RUN_NAME / f"step_{model.card.steps:08d}" / STATE_FILE)
    exported = load_file(str(result.model_path))  # optim.ema: the average is exported, not S
    assert state["s_ema_n"] == model.card.steps
    assert all(torch.equal(exported[k], v) for k, v in state["s_ema"].items() if k in exported)
    assert not all(torch.equal(exported[k], v) for k, v in state["s"].items() if k in exported)


def test_export_run_reselects_from_local_checkpoints(run) -> None:
    from nucflow.training import export_run

    out, _, result = run
    last = TrainConfig(**{**TINY.__dict__, "select_after": 3})
    again = export_run(out, config=last)
    assert again.card.steps == 3 and again.checkpoint.endswith("step_00000003")
    assert again.card.training["workers"] == 2  # kept from the first export's card
    assert load_model(again.model_path).card.model_id == again.card.model_id


def test_ranks_hold_identical_parameters(run) -> None:
    out, _, _ = run
    folder = out / "checkpoints" / RUN_NAME / "step_00000003"
    ranks = [json.loads((folder / f"rank_{k}.json").read_text()) for k in (0, 1)]
    assert ranks[0] == ranks[1]
    state = load_state(folder / STATE_FILE)
    assert state["step"] == 3
    s_sum = sum(v.double().sum() for k, v in state["s"].items() if "running" not in k
                and "num_batches" not in k)
    assert float(s_sum) == pytest.approx(ranks[0]["s"], rel=1e-9)


def test_resume_continues_at_the_saved_step(run) -> None:
    out, kwargs, _ = run
    with pytest.raises(TrainingError, match="already holds checkpoints"):
        train(config=TINY, **kwargs)
    longer = TrainConfig(**{**TINY.__dict__, "max_steps": 5})
    result = train(config=longer, resume=True, **kwargs)
    assert [int(r["step"]) for r in _rows(out / "losses.csv")] == [0, 1, 2, 3, 4]
    assert result.card.steps in (2, 3, 4, 5)
    assert load_file(str(result.model_path))


def test_exported_model_segments_a_slide_through_nucflow_segment(run, small_svs, tmp_path) -> None:
    from click.testing import CliRunner

    from nucflow.cli import main

    _, _, result = run
    out = tmp_path / "seg"
    cli = CliRunner().invoke(main, ["segment", str(small_svs), "-o", str(out), "--model", str(result.model_path), "-q"])
    assert cli.exit_code == 0, cli.output
    summary = json.loads((out / "small" / "summary.json").read_text())
    assert summary["model_id"] == load_model(result.model_path).card.model_id
    assert summary["mpp"] == 1.0 and (out / "small" / "nuclei.parquet").is_file()


def test_loader_processes_in_ray_train_workers_give_the_same_losses(run, tmp_path) -> None:
    """What a GPU worker does (here on CPU: the GPU is the one part mocked away): each Ray Train
    worker forks a DataLoader process that builds its batches; the run equals the fixture's."""
    from nucflow.training._train import _data_lists, _fit, loop_config

    out, kwargs, _ = run
    data = _data_lists([], kwargs["tiles"], kwargs["masks"], TINY)
    ahead = tmp_path / "ahead"
    _fit(loop_config(data, TINY, ahead, threads=1, resume_from=None, loaders=1),
         workers=2, gpus=0, cpus=1, storage=str(ahead / "checkpoints"))

    def losses(path):  # the first run's 3 steps (a resume may have added more), all but "seconds"
        return [{k: v for k, v in r.items() if k != "seconds"} for r in _rows(path)][:3]

    assert losses(ahead / "losses.csv") == losses(out / "losses.csv")
