"""`armt-viz` command line: user errors are one line and exit 2 (`--debug`: the traceback), every task offered
in --help is accepted, record defaults (probes on queries, level by size budget), eval progress and chance."""

from __future__ import annotations

import json

import pytest

from armt_viz import cli
from armt_viz._usage import UsageError
from armt_viz.record.run import RECORD_TASKS, WRITES_BUDGET_BYTES


def _run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_error(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert lines[0].startswith(f"armt-viz {command}: error: ") and "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("argv, command, says", [
    (["record", "--model", "no/such/model", "--store", "x.zarr"], "record", "--model 'no/such/model'"),
    (["eval", "--model", "no/such/model"], "eval", "--model 'no/such/model'"),
    (["eval", "--task", "ar-remember", "--pairs", "100"], "eval", "at most 16**key_size = 16"),
    (["eval", "--task", "babi"], "eval", "no demo model is shipped for bAbI"),
    (["record", "--tokens", str(10 ** 12), "--store", "x.zarr"], "record", "at most 2,147,483,648 tokens"),
    (["record", "--probes", "every:0", "--store", "x.zarr"], "record", "--probes 'every:0'"),
])
def test_user_errors_are_one_line_and_exit_2(capsys, tmp_path, monkeypatch, argv, command, says):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert says in _one_line_error(err, command)
    with pytest.raises(UsageError):  # --debug re-raises (traceback) instead
        cli.main([*argv, "--debug"])


@pytest.mark.parametrize("argv", [["eval", "--pairs", "-3"], ["record", "--tokens", "0", "--store", "x"]])
def test_negative_sizes_are_refused_by_the_parser(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "expected a positive integer" in err and "Traceback" not in err


def test_help_offers_only_tasks_that_work():
    parser = cli._parser()
    record = parser._subparsers._group_actions[0].choices["record"]
    task = next(a for a in record._actions if a.dest == "task")
    assert tuple(task.choices) == RECORD_TASKS
    assert "babi" not in task.choices
    level = next(a for a in record._actions if a.dest == "level")
    assert level.default == "auto"


def test_record_defaults_give_writes_and_query_probes(capsys, tmp_path):
    from armt_viz.trace import open_trace

    store = tmp_path / "s.zarr"
    code, _, err = _run(capsys, "record", "--task", "stream", "--tokens", "240", "--store", str(store))
    assert code == 0
    assert "level 'writes'" in err and f"{WRITES_BUDGET_BYTES / 1e9:.1f} GB budget" in err
    from armt_viz.viz.data import trace_level

    ds = open_trace(store)
    assert trace_level(ds) == "writes"
    answers = ds["ledger_token"].values[ds["ledger_role"].values == "answer"]
    assert ds.sizes["probe"] == len(answers) > 0
    assert sorted(ds["probe_token"].values.tolist()) == sorted((answers - 1).tolist())


def test_record_warns_past_the_training_range(capsys, tmp_path):
    store = tmp_path / "long.zarr"
    code, _, err = _run(capsys, "record", "--task", "ar-rewrite", "--tokens", str(4 * 260), "--probes", "none",
                        "--level", "summary", "--store", str(store))
    assert code == 0
    assert "260 segments, beyond the model's range" in err and "trained on at most 51 segments" in err


def test_eval_shows_progress_and_chance(capsys):
    code, out, err = _run(capsys, "eval", "--task", "ar-rewrite", "--pairs", "2", "--samples", "8",
                          "--batch-size", "4", "--json")
    assert code == 0
    res = json.loads(out)
    assert res["chance"]["exact_match"] == pytest.approx(1 / 16)
    lo, hi = res["chance"]["exact_match_ci95"]
    assert lo <= res["exact_match"] <= hi
    assert "eval AR n=2" in err and "8/8" in err  # the tqdm bar counted every sample
