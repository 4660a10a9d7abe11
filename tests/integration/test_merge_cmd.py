"""``icecache merge``: shards of an eval give the tables one run over all their samples would give;
overlapping or mismatched shards fail with the file named, and nothing is written."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icecache.cli.main import main
from icecache.eval.runner import SampleResult
from icecache.eval.summary import policy_rows, task_rows


def _result(sample_id, task, policy, correct, batch, total=0.1):
    return SampleResult(sample_id=sample_id, task=task, policy=policy, selector=policy.split("@")[0],
                        budget=None if policy == "full" else 256, prompt_tokens=100, correct=correct,
                        score=float(correct), output="x", new_tokens=3, batch=batch, batch_size=1,
                        index_build_s=0.5, step_s={"index_query": 0.01, "page_load": 0.02, "attention": 0.03,
                                                   "total": total, "rest": total - 0.06},
                        device_kv_bytes=10, full_kv_bytes=100, device_fraction=0.1)


def _write(path, results, context=4096):
    path.write_text(json.dumps({"command": "eval", "context": context, "policies": [],
                                "samples_detail": [r.to_dict() for r in results]}))
    return str(path)


shard = st.lists(st.tuples(st.sampled_from(["full", "icecache@256", "oracle@256"]), st.booleans()),
                 min_size=1, max_size=6)


@settings(max_examples=25)
@given(shards=st.lists(shard, min_size=1, max_size=4))
def test_merged_tables_equal_one_run_over_all_samples(tmp_path_factory, shards):
    tmp = tmp_path_factory.mktemp("merge")
    paths, everything = [], []
    for s, entries in enumerate(shards):
        rs = [_result(f"t{s}-{i}", f"task{s % 2}", p, c, batch=0, total=0.1 * (s + 1))
              for i, (p, c) in enumerate(entries)]
        paths.append(_write(tmp / f"s{s}.json", rs))
        everything += [_result(r.sample_id, r.task, r.policy, r.correct, batch=s, total=0.1 * (s + 1))
                       for r in rs]
    out = tmp / "merged.json"
    assert main(["merge", *paths, "--json", str(out)]) == 0
    merged = json.loads(out.read_text())
    assert merged["results"] == json.loads(json.dumps(task_rows(everything, 4096)))
    assert merged["overview"] == json.loads(json.dumps(policy_rows(everything, 4096)))
    assert sum(s["samples"] for s in merged["sources"]) == len(everything)


def test_rel_full_compares_only_samples_the_reference_decoded(tmp_path):
    a = _write(tmp_path / "a.json", [_result("x", "t", "full", True, 0), _result("y", "t", "full", False, 0),
                                     _result("x", "t", "icecache@256", True, 0),
                                     _result("y", "t", "icecache@256", False, 0)])
    b = _write(tmp_path / "b.json", [_result("x", "t", "oracle@256", True, 0)])
    assert main(["merge", a, b, "--json", str(tmp_path / "m.json")]) == 0
    rel = {r["policy"]: r["rel_full"] for r in json.loads((tmp_path / "m.json").read_text())["overview"]}
    assert rel == {"full": 1.0, "icecache@256": 1.0, "oracle@256": 1.0}
    pytest.importorskip("matplotlib")
    assert (tmp_path / "m.png").stat().st_size > 0  # the plot lands beside the JSON


def test_overlapping_or_mismatched_shards_fail_naming_the_files(tmp_path, capsys):
    a = _write(tmp_path / "a.json", [_result("x", "t", "full", True, 0)])
    b = _write(tmp_path / "b.json", [_result("x", "t", "full", False, 0)])
    c = _write(tmp_path / "c.json", [_result("z", "t", "full", False, 0)], context=8000)
    (tmp_path / "d.json").write_text('{"command": "eval"')
    (tmp_path / "e.json").write_text(json.dumps({"samples_detail": [{"sample_id": "q"}]}))
    out = tmp_path / "m.json"
    cases = [([a, b], f"sample 'x' under policy 'full' is in both '{a}' and '{b}'"),
             ([a, c], f"shards differ in context: '{a}' has 4096, '{c}' has 8000"),
             ([a, str(tmp_path / "d.json")], "is not JSON (line 1"),
             ([str(tmp_path / "e.json")], "samples_detail[0] is malformed"),
             ([str(tmp_path / "none.json")], "does not exist")]
    for inputs, message in cases:
        assert main(["merge", *inputs, "--json", str(out)]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()


def test_replace_keeps_the_later_shard_and_counts_what_it_replaced(tmp_path):
    old = _write(tmp_path / "old.json", [_result("x", "t", "full", False, 0),
                                         _result("y", "u", "full", True, 0)])
    new = _write(tmp_path / "new.json", [_result("x", "t", "full", True, 0)])
    out = tmp_path / "m.json"
    assert main(["merge", old, new, "--replace", "--json", str(out)]) == 0
    merged = json.loads(out.read_text())
    assert {(d["sample_id"], d["correct"]) for d in merged["samples_detail"]} == {("x", True), ("y", True)}
    assert [s["replaced"] for s in merged["sources"]] == [1, 0]
    assert merged["overview"][0]["n"] == 2 and merged["overview"][0]["accuracy"] == 1.0
