"""bench_forward --official: a user-supplied checkout of the official code, run in its own Python. Tested with a
minimal stand-in module written here (the official code is never in this repository)."""

import sys
import textwrap

import pytest

from bench import bench_forward

STAND_IN = '''
"""A stand-in with the official API's shape (not the official code): a cell wrapping the backbone, a wrapper
that runs it segment by segment with the memory tokens appended."""
import torch


class AssociativeMemoryCell(torch.nn.Module):
    def __init__(self, base_model, num_mem_tokens, d_mem, layers_attr="transformer.h", wrap_pos=False, **kw):
        super().__init__()
        self.model, self.M = base_model, num_mem_tokens
        self.memory = torch.nn.Parameter(torch.zeros(num_mem_tokens, base_model.config.n_embd))


class AssociativeRecurrentWrapper(torch.nn.Module):
    def __init__(self, memory_cell, segment_size, **rmt_config):
        super().__init__()
        self.memory_cell, self.S = memory_cell, segment_size

    def forward(self, input_ids, attention_mask):
        cell, out = self.memory_cell, []
        for s in range(0, input_ids.shape[1], self.S):
            x = cell.model.get_input_embeddings()(input_ids[:, s:s + self.S])
            x = torch.cat([x, cell.memory.unsqueeze(0).expand(x.shape[0], -1, -1)], 1)
            out.append(cell.model(inputs_embeds=x).logits[:, :-cell.M])
        return torch.cat(out, 1)
'''


@pytest.fixture
def checkout(tmp_path):
    pkg = tmp_path / "official" / "modeling_amt"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "language_modeling.py").write_text(textwrap.dedent(STAND_IN))
    return tmp_path / "official"


def test_official_rows_report_both_ratios(checkout, capsys):
    bench_forward.main(["--config", "cpu-tiny", "--tokens", "256", "--levels", "--official", str(checkout),
                        "--official-python", sys.executable])
    out = capsys.readouterr().out
    assert "x official" in out.splitlines()[1]
    row = next(line for line in out.splitlines() if line.startswith("official ARMT code "))
    tok_s, x_ref, x_off = row.split()[-3:]
    assert float(tok_s) > 0 and float(x_ref) > 0 and float(x_off) == pytest.approx(1.0, abs=0.011)
    model_row = next(line for line in out.splitlines() if line.startswith("armt_viz model(ids) default"))
    assert len(model_row.split()) >= 4 and float(model_row.split()[-1]) > 0  # the x official column
    assert "reference / official speed" in out


def test_a_missing_checkout_or_python_is_a_clear_error(tmp_path, checkout, capsys):
    with pytest.raises(SystemExit):
        bench_forward.main(["--config", "cpu-tiny", "--tokens", "256", "--official", str(tmp_path / "nowhere"),
                            "--official-python", sys.executable])
    assert "no modeling_amt/language_modeling.py there" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_forward.main(["--config", "cpu-tiny", "--tokens", "256", "--official", str(checkout),
                            "--official-python", str(tmp_path / "python-that-is-not-there")])
    assert "is not an executable file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_forward.main(["--config", "cpu-tiny", "--tokens", "256", "--official", str(checkout)])
    assert "go together" in capsys.readouterr().err


def test_an_import_failure_in_the_official_environment_is_reported(tmp_path, checkout, capsys):
    (checkout / "modeling_amt" / "language_modeling.py").write_text("import a_module_that_does_not_exist\n")
    with pytest.raises(SystemExit):
        bench_forward.main(["--config", "cpu-tiny", "--tokens", "256", "--official", str(checkout),
                            "--official-python", sys.executable])
    err = capsys.readouterr().err
    assert "the official code did not start" in err and "a_module_that_does_not_exist" in err
