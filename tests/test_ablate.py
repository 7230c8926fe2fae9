"""The ablation runner: configs it hands the trainer, resuming, aggregation, the files it writes."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest

from skelcl.ablate import BASE_ENCODER, SETTINGS, aggregate, main, run_ablation


class FakeTrainer:
    """Stands in for skelcl.train.run: records configs, writes summary.json like the trainer."""

    def __init__(self):
        self.configs = []

    @staticmethod
    def top1(config) -> float:
        # differs per setting, benchmark and seed, so mixing up runs changes the table
        names = [s.name for s in SETTINGS]
        views = config.get("views", "?")
        base = 50.0 + 3.0 * names.index(_setting_of(config)) + (7.0 if config["benchmark"] == "xsub" else 0.0)
        return base + 0.5 * config["seed"] + 0.01 * len(views)

    def __call__(self, config: dict) -> dict:
        self.configs.append(dict(config))
        summary = {
            "linear_top1": self.top1(config),
            "random_init_linear_top1": 20.0 + config["seed"],
            "knn_top1": 1.0,
            "pretrain_seconds": 0.1,
        }
        os.makedirs(config["out"], exist_ok=True)
        with open(os.path.join(config["out"], "summary.json"), "w") as f:
            json.dump(summary, f)
        return summary


def _setting_of(config) -> str:
    return config["out"].replace(os.sep, "/").split("/")[-3]


def test_every_setting_gets_its_config(tmp_path):
    fake = FakeTrainer()
    rows = run_ablation(
        out=str(tmp_path),
        epochs=3,
        seeds=[0, 1],
        benchmarks=["xview", "xsub"],
        overrides={"batch_size": 32, "views": "moderate"},
        run_fn=fake,
        log=lambda s: None,
    )
    assert len(fake.configs) == len(SETTINGS) * 2 * 2 == len(rows)
    views = {}
    for config in fake.configs:
        setting = _setting_of(config)
        assert config["epochs"] == 3 and config["batch_size"] == 32 and config["data"] == "synthetic"
        assert config["resume"] is False
        assert config["out"] == os.path.join(
            str(tmp_path), setting, config["benchmark"], f"seed{config['seed']}"
        )
        views[setting] = (config["views"], config.get("depth"), config.get("width"))
    # a setting's own keys beat the shared overrides; settings 1-7 get the base encoder
    assert views["all-random"] == ("paper", BASE_ENCODER["depth"], BASE_ENCODER["width"])
    assert views["gamma-fixed"][0] == "no-gamma" and views["beta-fixed"][0] == "no-beta"
    assert views["alpha-fixed"][0] == "no-alpha" and views["distance-only"][0] == "distance-only"
    assert views["no-view-aug"][0] == "none" and views["frame-level"][0] == "paper-frame"
    sizes = {v[1:] for k, v in views.items() if k.startswith("encoder-")}
    assert len(sizes | {(None, None)}) >= 3 and all(
        v[0] == "paper" for k, v in views.items() if "encoder" in k
    )
    for row in rows:
        cfg = {
            "benchmark": row["benchmark"],
            "seed": row["seed"],
            "views": views[row["setting"]][0],
            "out": row["run_dir"],
        }
        assert row["linear_top1"] == pytest.approx(FakeTrainer.top1(cfg))


def test_resume_skips_finished_runs(tmp_path):
    fake = FakeTrainer()
    kw = dict(
        out=str(tmp_path),
        epochs=1,
        seeds=[0],
        benchmarks=["xview"],
        settings=["all-random", "no-view-aug"],
        run_fn=fake,
        log=lambda s: None,
    )
    first = run_ablation(**kw)
    assert len(fake.configs) == 2
    second = run_ablation(**kw)
    assert len(fake.configs) == 2 and second == first  # read back, nothing rerun
    # a run that died before its summary is redone, resuming from its checkpoint
    run_dir = first[1]["run_dir"]
    os.remove(os.path.join(run_dir, "summary.json"))
    open(os.path.join(run_dir, "checkpoint.pt"), "wb").close()
    third = run_ablation(**kw)
    assert (
        len(fake.configs) == 3 and fake.configs[-1]["out"] == run_dir and fake.configs[-1]["resume"] is True
    )
    assert third == first


def test_run_without_linear_top1_is_an_error(tmp_path):
    def no_eval(config):
        return {"final_loss": 1.0}

    with pytest.raises(RuntimeError, match="linear_top1"):
        run_ablation(out=str(tmp_path), settings=["all-random"], run_fn=no_eval, log=lambda s: None)


def test_aggregate_mean_and_sample_std():
    rows = [
        {"setting": "a", "benchmark": "xview", "seed": s, "linear_top1": v, "random_init_linear_top1": 10.0}
        for s, v in enumerate([60.0, 64.0, 65.0])
    ]
    rows.append(
        {
            "setting": "b",
            "benchmark": "xview",
            "seed": 0,
            "linear_top1": 70.0,
            "random_init_linear_top1": None,
        }
    )
    a, b = aggregate(rows)
    assert a["seeds"] == 3 and a["linear_top1_mean"] == pytest.approx(63.0)
    assert a["linear_top1_std"] == pytest.approx(math.sqrt(((3**2) + 1 + 2**2) / 2))
    assert a["random_init_linear_top1_mean"] == 10.0
    assert b["seeds"] == 1 and b["linear_top1_mean"] == 70.0 and math.isnan(b["linear_top1_std"])


def test_cli_writes_table_csv_and_chart(tmp_path, capsys):
    fake = FakeTrainer()
    out = tmp_path / "abl"
    argv = [
        "--out",
        str(out),
        "--epochs",
        "2",
        "--seeds",
        "0,1",
        "--benchmarks",
        "xview,xsub",
        "--settings",
        "all-random,no-view-aug,encoder-d4-w4",
        "--set",
        "batch_size=16",
        "--set",
        "device=cpu",
    ]
    paths = main(argv, run_fn=fake)
    assert {c["device"] for c in fake.configs} == {"cpu"} and {c["batch_size"] for c in fake.configs} == {16}
    assert len(fake.configs) == 3 * 2 * 2
    with open(paths["csv"]) as f:
        table = list(csv.DictReader(f))
    assert [(r["setting"], r["benchmark"]) for r in table] == [
        (s, b) for s in ("all-random", "no-view-aug", "encoder-d4-w4") for b in ("xview", "xsub")
    ]
    for r in table:
        values = [float(v) for v in r["linear_top1_values"].split()]
        assert float(r["linear_top1_mean"]) == pytest.approx(sum(values) / 2, abs=0.01)
        assert float(r["linear_top1_std"]) == pytest.approx(
            abs(values[0] - values[1]) / math.sqrt(2), abs=0.01
        )
    with open(paths["runs"]) as f:
        assert len(list(csv.DictReader(f))) == 12
    md = open(paths["md"]).read()
    assert "| # | setting | xview | xsub |" in md
    mean = float(table[0]["linear_top1_mean"])
    std = float(table[0]["linear_top1_std"])
    assert f"| 1 | alpha, beta, gamma and d random | {mean:.1f} ± {std:.1f} |" in md
    assert "random-init encoder" in md and "python -m skelcl.ablate --out" in md
    with open(paths["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out
    # a second invocation only reads
    main(argv, run_fn=fake)
    assert len(fake.configs) == 12


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(settings=["nope"]), "settings"),
        (dict(settings=[]), "settings"),
        (dict(seeds=[]), "seeds"),
        (dict(seeds=[0, 0]), "seeds"),
        (dict(seeds=[-1]), "seeds"),
        (dict(benchmarks=[]), "benchmarks"),
        (dict(epochs=0), "epochs"),
        (dict(overrides={"seed": 3}), "overrides"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, word):
    with pytest.raises(ValueError, match=word):
        run_ablation(out=str(tmp_path), run_fn=FakeTrainer(), log=lambda s: None, **kwargs)


def test_cli_bad_set_and_seeds(tmp_path):
    with pytest.raises(ValueError, match="KEY=VALUE"):
        main(["--out", str(tmp_path), "--set", "batch_size"], run_fn=FakeTrainer())
    with pytest.raises(ValueError, match="--seeds"):
        main(["--out", str(tmp_path), "--seeds", "a,b"], run_fn=FakeTrainer())


@pytest.mark.slow
def test_real_trainer_tiny(tmp_path):
    """One tiny end-to-end run through skelcl.train.run on the synthetic data."""
    pytest.importorskip("skelcl.train")
    synthetic = {"num_subjects": 2, "reps_per_class": 1, "num_frames": 16, "num_classes": 3}
    rows = run_ablation(
        out=str(tmp_path),
        epochs=1,
        seeds=[0],
        benchmarks=["xview"],
        settings=["all-random"],
        overrides={
            "synthetic": synthetic,
            "batch_size": 8,
            "frames": 8,
            "probe_epochs": 2,
            "device": "cpu",
            "progress": False,
            "tensorboard": False,
            "width": 8,
            "depth": 3,
        },
        log=lambda s: None,
    )
    assert len(rows) == 1 and 0.0 <= rows[0]["linear_top1"] <= 100.0
    assert os.path.isfile(os.path.join(rows[0]["run_dir"], "summary.json"))
