"""Fact lineage on the crafted write / rewrite / delete case."""

from __future__ import annotations

import numpy as np

from armt_viz.analysis import fact_lineage, recall_shares


def test_lineage_of_a_rewritten_and_deleted_fact(rewrite_delete_case):
    lin = fact_lineage(rewrite_delete_case, 0)
    assert list(lin["version"].values) == [0, 1, 2]
    assert list(lin["kind"].values) == ["write", "write", "delete"]
    assert list(lin["value"].values) == [1, 2, -1]
    assert list(lin["written_segment"].values) == [0, 1, 3]
    assert list(lin["superseded_segment"].values) == [1, 3, -1]
    assert list(lin["superseded_token"].values) == [8, 24, -1]
    assert list(lin["superseded_by"].values) == ["write", "delete", ""]
    assert list(lin["n_queries"].values) == [0, 1, 1]
    assert list(lin["recall_version"].values) == [1, 2]
    assert list(lin["query_segment"].values) == [2, 4]
    assert list(lin["expected_answer"].values) == [2, -1]
    assert list(lin["probe"].values) == [0, 1]
    assert list(lin["prediction"].values) == [1, 105]
    assert list(lin["answer_status"].values) == ["stale", "current"]
    np.testing.assert_allclose(lin["recall_share"].values, recall_shares(rewrite_delete_case).values)
    assert lin["written_token"].attrs["units"] == "token"


def test_lineage_of_every_fact(rewrite_delete_case):
    lin = fact_lineage(rewrite_delete_case, attribution=False)
    assert sorted(set(lin["fact_id"].values.tolist())) == [0, 1, 2]
    assert lin.sizes["fact_version"] == 5 and lin.sizes["recall"] == 2 and "recall_share" not in lin
