"""Sweep specs: a bad spec is refused before any work with its file, line and field named (exit code 2,
nothing written); a good one expands into the grid's shards, whose hash says when results can be kept."""

import json
import sys

import pytest
from attrs import evolve
from sweep_specs import TINY, tasks_file

from icecache.cli.main import main
from icecache.sweep.plan import plan
from icecache.sweep.spec import load_spec

BAD = [
    ("contexts = [256]\ncontexts = [512]\n", "spec.toml:2: not valid TOML: Cannot overwrite a value"),
    ("contexts = [256]\ncontxts = [512]\n", "spec.toml:2: unknown field 'contxts'; fields: models, contexts"),
    ("samples = 1\ncontexts = 512\n", "spec.toml:2: contexts must be a list, each entry a positive integer; "
                                      "got 512 (write [512])"),
    ('samples = "3"\n', "spec.toml:1: samples must be a positive integer, got '3'"),
    ("contexts = [256,\n  true]\n", "spec.toml:2: contexts: each entry must be a positive integer, got True"),
    ("seeds = [0, 1, 0]\n", "spec.toml:1: seeds: 0 is listed twice"),
    ('samples = 1\npolicies = [\n  "full",\n  "h3o",\n]\n',
     "spec.toml:4: policies: unknown selector 'h3o'; available selectors: arkvale"),
    ('policies = ["full", "quest@-5"]\n', "spec.toml:1: policies: budget must be positive, got -5"),
    ('policies = ["icecache:wide"]\n', "spec.toml:1: policies: 'icecache:wide' is a variant of 'icecache': "
                                       "give its options in a [policy_options.\"icecache:wide\"] table"),
    ('policies = ["icecache"]\n\n[policy_options.quest]\nbucket = 2\n',
     "spec.toml:3: policy_options: policy_options names ['quest'], which no policy"),
    ('policies = ["icecache:wide"]\n[policy_options."icecache:wide"]\nindex_options = {nope = 1}\n',
     "spec.toml:2: policy_options for 'icecache:wide' do not fit the 'icecache' selector"),
    ('budgets = [40]\nwindow = 60\npolicies = ["full", "icecache"]\n',
     "spec.toml:3: policies: icecache@40: budget=40 is smaller than sink_tokens + window_tokens"),
    ('models = ["embedded",\n  "/no/such/model"]\n',
     "spec.toml:2: models: model path '/no/such/model' does not exist"),
    ('tasks = ["niah_single", "haystack"]\n', "spec.toml:1: tasks: unknown task 'haystack'; available tasks"),
    ('tasks = ["niah_single", ["niah_noise", "niah_single"]]\n',
     "spec.toml:1: tasks: 'niah_single' is in task sets 1 and 2"),
    ("samples = 2\ncontexts = [1024, 9000]\n",
     "spec.toml:2: context 9000 is longer than the model allows: it has 8192 positions"),
    ('tasks_files = ["missing.jsonl"]\n', "spec.toml:1: tasks_files: tasks file"),
    ('device = "tpu"\n', "spec.toml:1: device 'tpu' is not a torch device"),
    ('page_dtype = "int8"\n', "spec.toml:1: page_dtype 'int8'"),
    ('host_pages = 4\ncontexts = [512]\n', "spec.toml:1: host_pages 4 cannot hold the prompt's pages"),
    ("seeds = [-1]\n", "spec.toml:1: seeds: each entry must be a non-negative integer, got -1"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m.split(": ", 1)[1][:40] for _, m in BAD])
def test_a_bad_spec_names_its_line_and_nothing_is_written(write_spec, tmp_path, capsys, text, message):
    out = tmp_path / "out"
    assert main(["sweep", write_spec(text), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("icecache sweep: error: ") and "Traceback" not in err
    assert message in err
    assert not out.exists()


def test_json_specs_refuse_duplicate_keys_and_name_the_line(write_spec, tmp_path, capsys):
    spec = write_spec('{\n  "samples": 1,\n  "contexts": [256],\n  "samples": 2\n}\n', "spec.json")
    assert main(["sweep", spec, "--out", str(tmp_path / "out")]) == 2
    assert "spec.json:4: duplicate key 'samples' (first on line 2)" in capsys.readouterr().err
    bad = write_spec('{"samples": 1,\n "contexts": [256,]}', "bad.json")
    assert main(["sweep", bad, "--out", str(tmp_path / "out")]) == 2
    assert "bad.json:2: not valid JSON" in capsys.readouterr().err


def test_a_bad_tasks_file_names_its_own_line_too(write_spec, tmp_path, capsys):
    tasks_file(tmp_path / "a.jsonl", "a")
    (tmp_path / "b.jsonl").write_text('{"id": "x"}\n')
    spec = write_spec('tasks_files = ["a.jsonl",\n  "b.jsonl"]\n')
    assert main(["sweep", spec, "--out", str(tmp_path / "out")]) == 2
    assert "spec.toml:2: tasks_files: " in (err := capsys.readouterr().err)
    assert "b.jsonl:1: missing field(s)" in err


def test_ray_missing_says_how_to_install_it(write_spec, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` does where Ray is not installed
    assert main(["sweep", write_spec(TINY), "--backend", "ray", "--out", str(tmp_path / "out")]) == 2
    assert "--backend ray needs Ray, which is not installed: pip install 'icecache[ray]'" in \
        capsys.readouterr().err


def test_the_grid_expands_into_shards_that_share_prefills_across_policies(write_spec, tmp_path):
    tasks_file(tmp_path / "mine.jsonl", "m", n=3)
    spec = load_spec(write_spec(
        'contexts = [256, 512]\ntasks = ["niah_single", "niah_noise,passkey"]\nseeds = [0, 1]\n'
        'samples = 2\ntasks_files = ["mine.jsonl"]\npolicies = ["full", "icecache", "quest@1024"]\n'
        'budgets = [128, 256]\n'))
    shards = plan(spec)
    assert len(shards) == 2 * 2 * 2 + 1
    assert all(s.policies == ("full", "icecache@128", "icecache@256", "quest@1024") for s in shards)
    assert len({s.name for s in shards}) == len(shards)
    by_name = {s.name: s for s in shards}
    assert by_name["embedded-c512-niah_noise+passkey-s1"].decodes == 2 * 2 * 4
    assert by_name["embedded-mine"].decodes == 3 * 4 and by_name["embedded-mine"].context is None
    costs = [(s.context or 0) * s.decodes for s in shards]
    assert costs == sorted(costs, reverse=True) and shards[0].context == 512  # the longest first
    assert {s.group for s in shards} == {("embedded", 256), ("embedded", 512), ("embedded", None)}


def test_the_spec_hash_follows_what_changes_results(write_spec, tmp_path):
    (shard,) = plan(load_spec(write_spec(TINY.replace("[256, 320]", "[256]"))))
    assert shard.spec_hash == plan(load_spec(write_spec(TINY.replace("[256, 320]", "[256]"))))[0].spec_hash
    assert evolve(shard, threads=2, name="other").spec_hash == shard.spec_hash
    for change in ({"policies": ("full",)}, {"seed": 1}, {"batch_size": 2}, {"window": 8},
                   {"options": {"icecache": {"a": 1}}}, {"tasks_sha256": "0"}):
        assert evolve(shard, **change).spec_hash != shard.spec_hash, change


def test_dry_run_lists_what_would_run_and_keeps_matching_results(write_spec, tmp_path, capsys):
    spec = write_spec(TINY)
    out = tmp_path / "out"
    shards = plan(load_spec(spec))
    (out / "shards").mkdir(parents=True)
    for shard, spec_hash in zip(shards, (shards[0].spec_hash, "stale"), strict=True):
        (out / "shards" / f"{shard.name}.json").write_text(json.dumps({"sweep": {"spec_hash": spec_hash}}))
    assert main(["sweep", spec, "--out", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split()[-2:] == ["kept", "no"] and lines[3].split()[-2:] == ["changed", "yes"]
    assert "1 of 2 shards would run" in lines[-1]
    assert main(["sweep", spec, "--out", str(out), "--dry-run", "--force"]) == 0
    assert "2 of 2 shards would run" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "shards").iterdir()) == sorted(f"{s.name}.json" for s in shards)


def test_an_output_folder_in_use_or_unwritable_is_refused_before_any_work(write_spec, tmp_path, capsys):
    from icecache.eval.files import OutputLock

    spec, out = write_spec(TINY), tmp_path / "out"
    with OutputLock(out / "sweep.json", "--out"):
        assert main(["sweep", spec, "--out", str(out)]) == 2
        assert "is being written by another icecache process" in capsys.readouterr().err
    assert main(["sweep", spec, "--out", "/dev/null"]) == 2
    assert "--out '/dev/null' exists and is not a directory" in capsys.readouterr().err
    assert not out.exists()


YAML_TINY = """\
# the TINY sweep, in YAML
models: [embedded]
contexts:
  - 256
  - 320
tasks: [niah_noise]
samples: 1
policies: ["full", icecache]
budgets: [128]
"""


@pytest.mark.parametrize("name", ["spec.yaml", "spec.yml"])
def test_a_yaml_spec_reads_as_the_same_spec_as_its_toml(write_spec, name):
    from_yaml, from_toml = load_spec(write_spec(YAML_TINY, name)), load_spec(write_spec(TINY))
    assert evolve(from_yaml, source=from_toml.source) == from_toml
    assert [s.spec_hash for s in plan(from_yaml)] == [s.spec_hash for s in plan(from_toml)]


YAML_BAD = [
    ("samples: 1\ncontexts: [256]\nsamples: 2\n", "spec.yaml:3: duplicate key 'samples' (first on line 1)"),
    ("policies: [icecache]\npolicy_options:\n  icecache: {bucket: 1, bucket: 2}\n",
     "spec.yaml:3: duplicate key 'bucket' (first on line 3)"),
    ("samples: 1\ncontexts: [256\npolicies: [full]\n", "spec.yaml:3: not valid YAML: while parsing a flow"),
    ("samples: 1\n  contexts: [256]\n", "spec.yaml:2: not valid YAML: mapping values are not allowed here"),
    ("samples: 1\npolicies:\n  - full\n  - h3o\n", "spec.yaml:4: policies: unknown selector 'h3o'"),
    ('samples: "3"\n', "spec.yaml:1: samples must be a positive integer, got '3'"),
    ("contxts: [256]\n", "spec.yaml:1: unknown field 'contxts'"),
    ("- samples\n", "spec.yaml: the spec must be an object of fields, got list"),
]


@pytest.mark.parametrize(("text", "message"), YAML_BAD, ids=[m.split(": ", 1)[1][:40] for _, m in YAML_BAD])
def test_a_bad_yaml_spec_names_its_line(write_spec, tmp_path, capsys, text, message):
    out = tmp_path / "out"
    assert main(["sweep", write_spec(text, "spec.yaml"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("icecache sweep: error: ") and "Traceback" not in err
    assert message in err
    assert not out.exists()


def test_snapshot_dir_reaches_every_shard_resolved_and_leaves_the_hash_alone(write_spec, tmp_path, capsys):
    with_snaps = plan(load_spec(write_spec(TINY + 'snapshot_dir = "snaps"\n')))
    assert {s.snapshot_dir for s in with_snaps} == {str(tmp_path / "snaps")}
    assert [s.spec_hash for s in with_snaps] == [s.spec_hash for s in plan(load_spec(write_spec(TINY)))]
    (tmp_path / "a_file").write_text("")
    assert main(["sweep", write_spec(TINY + 'snapshot_dir = "a_file"\n'), "--out", str(tmp_path / "o")]) == 2
    assert f"spec.toml:7: snapshot_dir '{tmp_path / 'a_file'}' exists and is not a directory" in \
        capsys.readouterr().err
def test_a_spec_that_is_not_utf8_names_its_line(tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_bytes(b"contexts = [256]\nsamples = 1  # caf\xe9\n")  # latin-1: was a traceback
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{spec}:2: not UTF-8 text (byte 35 is 0xe9)" in err and "Traceback" not in err
