"""The ablation runner's bookkeeping: finished runs are read back, not retrained; the table by hand."""
import json

import pytest

from src.tools import ablate


def write_log(folder, val_oious, epochs):
    folder.mkdir(parents=True)
    lines = []
    for epoch, oiou in enumerate(val_oious, start=1):
        lines.append({"epoch": epoch, "step": epoch * 10, "loss": 1.0})
        lines.append({"epoch": epoch, "mean_loss": 1.0, "val": {"oIoU": oiou, "mIoU": oiou, "prec@0.5": oiou}})
    (folder / "train_log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_a_finished_run_is_read_with_its_last_and_best_epochs(tmp_path):
    write_log(tmp_path / "full", [0.3, 0.6, 0.5], epochs=3)
    last, best = ablate.read_run(str(tmp_path / "full"), 3)
    assert last["oIoU"] == 0.5 and best["oIoU"] == 0.6
    assert ablate.read_run(str(tmp_path / "full"), 4) is None  # stopped before the budget: trained again
    assert ablate.read_run(str(tmp_path / "missing"), 3) is None


def test_existing_runs_are_not_trained_again_and_the_table_compares_with_full(tmp_path, capsys, monkeypatch):
    write_log(tmp_path / "full", [0.5, 0.62], epochs=2)
    write_log(tmp_path / "one_proposal", [0.4, 0.55], epochs=2)
    monkeypatch.setattr(ablate.subprocess, "Popen", lambda *args, **kwargs: pytest.fail("trained again"))
    code = ablate.main(["--work_dir", str(tmp_path), "--variants", "full,one_proposal", "--epochs", "2",
                        "--json", str(tmp_path / "ablation.json")])
    assert code == 0
    out = capsys.readouterr().out
    assert "| full | the model and recipe of the config | 62.0 | 62.0 | 62.0 |" in out
    assert "| one_proposal |" in out and out.strip().endswith("| -7.0 |")
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert saved["one_proposal"]["last"]["oIoU"] == 0.55 and saved["full"]["seconds"] is None


def test_an_unknown_variant_is_one_line(tmp_path, capsys):
    assert ablate.main(["--work_dir", str(tmp_path), "--variants", "full,no_decoder"]) == 1
    known = ", ".join(ablate.VARIANTS)
    assert capsys.readouterr().err.strip() == f"error: unknown variant(s) no_decoder; known: {known}"


def test_lr_multiplier_variant_keeps_the_new_modules_at_the_configs_rate(tiny_config):
    flags = ablate.variant_flags("lr_mult_10", tiny_config)
    assert flags == ["--new_param_lr_mult", "10", "--lr", repr(tiny_config.lr / 10)]
    assert ablate.variant_flags("no_aux_loss", tiny_config) == ["--loss_aux", "0"]


def test_a_failing_variant_names_trains_error_and_its_log(tmp_path, capsys):
    """train.py runs for real and stops on the missing data; its last line and the log's path are the error."""
    missing = tmp_path / "no_records"
    code = ablate.main(["--work_dir", str(tmp_path / "work"), "--variants", "full", "--mindrecord_dir", str(missing)])
    assert code == 1
    err = capsys.readouterr().err.strip()
    log = tmp_path / "work" / "full.log"
    assert err.startswith("error: variant full failed: ") and err.endswith(f"(log: {log})")
    assert str(missing) in err and len(err.splitlines()) == 1
    assert log.read_text().strip().splitlines()[-1].removeprefix("error: ") in err
    assert "failed: error:" not in err


def test_a_work_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert ablate.main(["--work_dir", str(tmp_path / "file"), "--variants", "full"]) == 1
    assert capsys.readouterr().err.strip() == f"error: --work_dir {tmp_path / 'file'} is a file, not a folder"
