"""``icecache eval`` / ``icecache run``: bad input fails early with a clear message and writes nothing;
tiny end-to-end runs write the documented JSON."""

import json

import pytest

from icecache.cli.main import main


def _row(i, **kw):
    context = "The grass is green. " * 20 + f"The code word is amber{i}. " + "The sky is blue. " * 20
    row = {"id": f"s{i}", "context": context, "question": "What is the code word?", "answers": [f"amber{i}"],
           "answer_prefix": "The code word is", "max_new_tokens": 4}
    row.update(kw)
    return json.dumps(row)


@pytest.fixture
def tasks_file(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(_row(i) for i in range(2)) + "\n")
    return path


BAD = [
    (["eval", "--model", "/no/such/model"], "model path '/no/such/model' does not exist"),
    (["eval", "--context", "9000"], "--context 9000 is longer than the model allows"),
    (["eval", "--tasks", "niah_single,haystack"], "unknown task 'haystack'; available tasks: common_words"),
    (["eval", "--policy", "full,h3o"], "unknown selector 'h3o'; available selectors: arkvale"),
    (["eval", "--policy", "icecache", "--budget", "0"], "budget must be positive, got 0"),
    (["eval", "--policy", "quest@-5"], "budget must be positive, got -5 in 'quest@-5'"),
    (["eval", "--policy", "icecache", "--budget", "40", "--window", "60"],
     "budget=40 is smaller than sink_tokens + window_tokens = 4 + 60 = 64"),
    (["eval", "--samples", "0"], "--samples must be positive"),
    (["eval", "--policy", "icecache:wide"],
     "policy 'icecache:wide' is a variant of 'icecache': give its options"),
    (["eval", "--policy", "icecache:wide", "--policy-options", '{"icecache:wide": {"index_options": '
      '{"candidates": 8, "nope": 1}}}'], "--policy-options for 'icecache:wide' do not fit the 'icecache'"),
    (["eval", "--policy", "icecache", "--policy-options", '{"quest": {}}'],
     "--policy-options names ['quest'], which no policy in 'icecache' uses"),
    (["run", "--policies", "full,nope"], "unknown selector 'nope'"),
    (["run", "--context", "100000"], "--context 100000 is longer than the model allows"),
    (["run", "--budget", "-1"], "budget must be positive, got -1"),
    (["eval", "--policy", "icecache", "--device-pages", "3"],
     "--device-pages 3 cannot hold one layer's selection for icecache@256: 12 rows x 192 selected tokens"),
    (["eval", "--policy", "quest", "--host-pages", "10"],
     "--host-pages 10 cannot hold the prompt's pages for quest@256: 28 sparse layers x 12 rows"),
    (["eval", "--policy", "icecache", "--tiers", "device"],
     "--tiers device cannot hold the prompt's pages: its backing tiers (every tier after the first) hold"),
    (["eval", "--policy", "icecache", "--tiers", "host,device"],
     "--tiers host,device cannot hold the prompt's"),
    (["eval", "--policy", "icecache", "--page-dtype", "float8"], "--page-dtype 'float8' is not supported"),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_a_clear_error_and_nothing_is_written(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    extra = ["--json", str(out / "r.json")] if argv[0] == "eval" else ["--out", str(out)]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not out.exists()


@pytest.mark.parametrize(("config", "message"), [
    ({"model_type": "gpt2"}, "has model_type 'gpt2', which IceCache is not tested on"),
    ({"model_type": "llama4_text", "attention_chunk_size": 8192}, "uses chunked attention"),
    ({"model_type": "qwen3_next", "layer_types": ["linear_attention", "full_attention"]},
     "uses layers of type 'linear_attention'"),
    ({"model_type": "deepseek_v3", "kv_lora_rank": 512}, "uses multi-head latent attention"),
    ({"model_type": "t5", "is_encoder_decoder": True}, "uses encoder-decoder attention"),
])
def test_a_model_whose_attention_is_not_reproduced_is_refused(tmp_path, capsys, config, message):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(config))
    assert main(["eval", "--model", str(model), "--json", str(tmp_path / "r.json")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(("content", "message"), [
    ("", "holds no samples"),
    (_row(0) + "\n" + _row(1)[:-3] + "\n", "tasks.jsonl:2: not valid JSON"),
    (_row(0, answers=[]) + "\n", "tasks.jsonl:1: field 'answers' must be a non-empty list"),
])
def test_bad_tasks_file_names_the_line(tmp_path, capsys, content, message):
    path = tmp_path / "tasks.jsonl"
    path.write_text(content)
    assert main(["eval", "--tasks-file", str(path), "--json", str(tmp_path / "r.json")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.model
def test_policy_variants_carry_their_options():
    import attrs

    from icecache.eval.policies import build_policy, parse_policies
    from icecache.index.hierarchy.index import HierarchyIndex
    from icecache.integrations.hf import load_model

    specs = parse_policies("icecache,icecache:wide@128,full", 256,
                           options={"icecache:wide": {"index_options": {"candidates": 12.0}}})
    assert [s.label for s in specs] == ["icecache@256", "icecache:wide@128", "full"]
    model, _ = load_model()
    wide = build_policy(specs[1], model.config).make_selector(5)
    plain = build_policy(specs[0], model.config).make_selector(5)
    default = attrs.fields(HierarchyIndex).candidates.default
    assert wide.page_index.candidates == 12.0 != default and plain.page_index.candidates == default


def test_eval_with_a_tasks_file_writes_results(tmp_path, tasks_file, capsys):
    out = tmp_path / "r.json"
    argv = ["eval", "--tasks-file", str(tasks_file), "--policy", "full,streamingllm", "--budget", "64",
            "--json", str(out), "--no-progress"]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    rows = data["results"]
    assert {(r["policy"], r["task"]) for r in rows} == {("full", "file"), ("streamingllm@64", "file")}
    for r in rows:
        assert set(r) >= {"policy", "budget", "context", "task", "n", "accuracy"}
        assert r["n"] == 2 and 0.0 <= r["accuracy"] <= 1.0
    assert next(r for r in rows if r["policy"] == "full")["accuracy"] == 1.0
    assert len(data["samples_detail"]) == 4
    assert "streamingllm@64" in capsys.readouterr().out


@pytest.mark.model
def test_run_writes_results_and_plot(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "--out", str(out), "--context", "400", "--samples", "1", "--tasks", "passkey",
            "--policies", "full,icecache@128,streamingllm@128", "--no-progress"]
    assert main(argv) == 0
    data = json.loads((out / "results.json").read_text())
    assert [r["policy"] for r in data["overview"]] == ["full", "icecache@128", "streamingllm@128"]
    full, ice, stream = data["overview"]
    # NOTE: a dense layer holds its KV plus room to grow (a 32nd, at least 64 positions: 400 -> 464)
    assert 1.0 <= full["device_kv_fraction"] <= 464 / 400 + 0.01 and ice["device_kv_fraction"] < 1.0
    assert full["host_fraction"] < 0.02 and ice["host_fraction"] > 0.5  # sparse layers' pages are on the host
    assert full["rel_full"] == 1.0
    for row in data["overview"]:
        assert {"index_query_ms", "page_load_ms", "attention_ms", "rest_ms", "total_ms"} <= set(row)
    assert (out / "summary.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "rel_full" in printed and "icecache@128" in printed


@pytest.mark.model
def test_a_host_cap_with_a_disk_tier_holds_and_decodes_the_same_tokens(tmp_path, tasks_file):
    """``--host-pages`` at a quarter of the KV's pages plus ``--disk-dir``: the host tier never holds more
    than the cap, the rest lives in a real page file, and every answer is token-identical."""
    base = ["eval", "--tasks-file", str(tasks_file), "--policy", "icecache@64,quest@64", "--no-progress",
            "--batch-size", "2"]
    assert main([*base, "--json", str(tmp_path / "free.json")]) == 0
    free = json.loads((tmp_path / "free.json").read_text())["samples_detail"]
    host = {t["name"]: t for t in free[0]["memory"]["tiers"]}["host"]
    cap = host["pages"] // 4
    disk = tmp_path / "disk"
    disk.mkdir()
    capped_run = ["--json", str(tmp_path / "cap.json"), "--host-pages", str(cap), "--disk-dir", str(disk)]
    assert main([*base, *capped_run]) == 0
    capped = json.loads((tmp_path / "cap.json").read_text())["samples_detail"]
    assert [r["output"] for r in capped] == [r["output"] for r in free]
    for r in capped:
        tiers = {t["name"]: t for t in r["memory"]["tiers"]}
        assert tiers["host"]["allocated_slots"] <= cap and tiers["disk"]["pages"] > 0
        m = r["memory"]
        assert m["host"]["kv_payload"] + m["host"]["page_padding"] + m["host"]["spare_slots"] <= (
            cap * tiers["host"]["page_nbytes"])
        assert m["disk"]["kv_payload"] > 0 and m["disk_bytes"] >= m["disk"]["kv_payload"]
    assert not any(disk.iterdir())  # the page file is removed when the cache closes


@pytest.mark.model
@pytest.mark.slow  # NOTE: two eval runs (~30 s); the default run covers the same path via IceCache.for_model
def test_tiers_and_tier_options_from_the_cli_reach_the_store(tmp_path, tasks_file):
    """``--tiers``, ``--tier-options`` and ``--eviction`` compose the stack the cache builds: the device
    tier's LFU order and the host's FIFO show in the results, the answers are the default run's."""
    base = ["eval", "--tasks-file", str(tasks_file), "--policy", "icecache@64", "--no-progress",
            "--batch-size", "2"]
    assert main([*base, "--json", str(tmp_path / "plain.json")]) == 0
    argv = [*base, "--json", str(tmp_path / "lfu.json"), "--tiers", "device,host", "--eviction", "fifo",
            "--tier-options", '{"device": {"eviction": "lfu"}, "host": {"pin_memory": false}}']
    assert main(argv) == 0
    plain = json.loads((tmp_path / "plain.json").read_text())
    lfu = json.loads((tmp_path / "lfu.json").read_text())
    assert [r["output"] for r in lfu["samples_detail"]] == [r["output"] for r in plain["samples_detail"]]
    tiers = {t["name"]: t for t in lfu["samples_detail"][0]["memory"]["tiers"]}
    assert tiers["device"]["eviction"] == "lfu" and tiers["host"]["eviction"] == "fifo"
    assert lfu["settings"]["tiers"] == ["device", "host"] and lfu["settings"]["eviction"] == "fifo"
