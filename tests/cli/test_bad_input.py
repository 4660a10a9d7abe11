"""Every bad value a user types or points at is a clear ``icecache <cmd>: error: ...`` naming it,
exit code 2, before the model loads, and no traceback."""

import json
import shutil

import pytest

from icecache.cli.main import main
from icecache.integrations.hf.loader import resolve_checkpoint


@pytest.fixture(autouse=True)
def _no_model(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr("icecache.eval.session.load", refuse)


def _fails(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    prog = "icecache " + " ".join(argv[:2] if argv[0] == "bench" else argv[:1])
    # NOTE: from the error on: a fresh cache converts the embedded model first, with progress on stderr
    at = err.find(f"{prog}: error: ")
    assert at >= 0 and message in err[at:] and "error" not in err[:at], err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(("extra", "message"), [
    (["--dtype", "float8"], "--dtype 'float8' is not supported; use one of float32, float16, bfloat16"),
    (["--dtype", "int8"], "--dtype 'int8' is not supported"),
    (["--device", "meta"], "--device 'meta': the cache runs on cpu or cuda"),
    (["--device", "xpu"], "--device 'xpu': the cache runs on cpu or cuda"),
    (["--device", "banana"], "--device 'banana' is not a torch device"),
    (["--budget", "200000"], "--budget 200000 is larger than the model's 8192 positions"),
    (["--policy", "icecache@100000000"],
     "budget 100000000 of 'icecache@100000000' is larger than the model's 8192 positions"),
    (["--budget", "200000", "--window", "100000"],
     "--window 100000 is larger than the model's 8192 positions"),
    (["--sink", "-1"], "--sink must be a non-negative number of tokens, got -1"),
    (["--window", "-5"], "--window must be a non-negative number of tokens, got -5"),
    (["--sink", "5000", "--window", "5000"],
     "--sink 5000 + --window 5000 = 10000 tokens is more than the model's"),
    (["--budget", "64", "--window", "100"], "budget=64 is smaller than sink_tokens + window_tokens"),
    (["--device-pages", "0"], "--device-pages must be positive, got 0"),
    (["--host-pages", "-2"], "--host-pages must be positive, got -2"),
    (["--batch-size", "0"], "--batch-size must be positive, got 0"),
    (["--seed", "-1"], "--seed must be non-negative, got -1"),
    (["--disk-dir", ""], "--disk-dir is empty"),
    (["--disk-dir", "/no/such/dir"], "--disk-dir '/no/such/dir' does not exist"),
    (["--disk-dir", "/etc/hostname"], "--disk-dir '/etc/hostname' is not a directory"),
    (["--resume"], "--resume needs --json PATH"),
    (["--tiers", "device,nope"], "unknown tier 'nope'; available tiers: device, disk, host"),
    (["--tiers", "device,host,host"], "tiers must be distinct"),
    (["--eviction", "weird"], "unknown eviction 'weird'; available evictions: fifo, lfu, lru, mru"),
    (["--tier-options", '{"disk": {"eviction": "lfu"}}'],
     "--tier-options names tier 'disk', which is not in the stack ['device', 'host']"),
    (["--tier-options", '{"device": {"eviction": "lfux"}}'], "unknown eviction 'lfux'"),
    (["--tier-options", '{"host": {"bogus": 1}}'],
     "tier 'host' does not take these options ['bogus']: HostTier.from_config() got an unexpected keyword "
     "argument 'bogus'"),
    (["--tier-options", '{"device": {"capacity": "3"}}'],
     "tier 'device': capacity must be a positive number of pages or null, got '3'"),
    (["--budget-policy", "nope"],
     "unknown budget 'nope'; available budgets: adakv, per-layer, pyramid, uniform"),
    (["--budget-policy", "pyramid", "--budget-options", '{"taper": 2}'],
     "taper must be a number in [0, 1), got 2"),
    (["--budget-policy", "per-layer", "--budget-options", '{"budgets": [999]}'],
     "per-layer budgets lists 1 budgets for 28 sparse layers (layers 2..29): [999]"),
    (["--policy-options", '{"icecache": {"rank_by": "x"}}'],
     "do not fit the 'icecache' selector: 'rank_by' must be in ('density', 'mass') (got 'x')"),
    # issue 13's probe: each was accepted, a traceback or a crash before
    (["--policy", "full,icecache@"], "policy 'icecache@' has no budget after '@'; write icecache@N"),
    (["--policy", "full@64,icecache"], "policy 'full@64': full attends every token and takes no budget"),
    (["--budget-policy", "per-layer"], "options [] do not fit budget policy 'per-layer': "
                                       "PerLayerBudget.__init__() missing 1 required keyword-only argument"),
    (["--budget-policy", "pyramid", "--budget-options", '{"tapr": 0.2}'],
     "options ['tapr'] do not fit budget policy 'pyramid'"),
    (["--threads", "100000"], "--threads 100000 is more than 4 per CPU of this machine"),
    (["--device-pages", "1000000000000"], "--device-pages 1000000000000 x "),
    (["--device", "cpu:1"], "--device 'cpu:1': the CPU has no index; use cpu"),
    (["--model", ""], "the model path is empty; leave --model out for the embedded model"),
    (["--policy-options", '{"icecache": {"index_options": 5}}'],
     "do not fit the 'icecache' selector: 'index_options' must be <class 'dict'> (got 5"),
])
def test_bad_eval_options(tasks_file, capsys, extra, message):
    _fails(["eval", "--tasks-file", str(tasks_file), "--policy", "full,icecache", *extra], message, capsys)


@pytest.mark.parametrize(("extra", "message"), [
    (["--tiers", "device,,host"], "--tiers must be comma-separated tier names, got 'device,,host'"),
    (["--tier-options", '{"device": 3}'], "--tier-options must map names to option objects"),
])
def test_bad_tier_flags_are_argparse_errors_naming_them(tasks_file, capsys, extra, message):
    with pytest.raises(SystemExit) as info:
        main(["eval", "--tasks-file", str(tasks_file), *extra])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cuda_without_cuda(tasks_file, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    _fails(["eval", "--tasks-file", str(tasks_file), "--device", "cuda"],
           "--device 'cuda' asked for but CUDA is not available", capsys)


def test_unwritable_disk_dir(tasks_file, readonly_dir, capsys):
    _fails(["eval", "--tasks-file", str(tasks_file), "--disk-dir", str(readonly_dir)],
           f"--disk-dir '{readonly_dir}': cannot write in", capsys)


@pytest.mark.parametrize(("tasks", "message"), [
    ("", "no task names given in ''"),  # was: the default suite
    ("niah_single,,", "task names must be comma-separated names, got 'niah_single,,' (an empty name)"),
    ("all,nope", "'all' means every task and cannot be combined with others, got 'all,nope'"),
])
def test_bad_task_names(capsys, tasks, message):
    _fails(["eval", "--tasks", tasks, "--context", "256"], message, capsys)
    _fails(["run", "--tasks", tasks, "--context", "256"], message, capsys)


def test_huge_sample_counts_are_refused(capsys):
    for cmd in ("eval", "run"):  # every sample is generated first: 10**9 ran out of memory
        _fails([cmd, "--tasks", "niah_single", "--samples", "1000000000"],
               "--samples 1000000000 is more than 10000 samples per task", capsys)


def test_run_checks_the_same_options(capsys):
    _fails(["run", "--dtype", "float8"], "--dtype 'float8' is not supported", capsys)
    _fails(["run", "--budget", "9000"], "--budget 9000 is larger than the model's 8192 positions", capsys)
    _fails(["run", "--resume"], "--resume needs --out DIR", capsys)


# ----- model files ---------------------------------------------------------------------------------------
@pytest.fixture
def llama_dir(tmp_path):
    """A copy of the embedded model's converted checkpoint, to break."""
    target = tmp_path / "model"
    shutil.copytree(resolve_checkpoint(), target)
    return target


def _model(model, capsys, message):
    argv = ["eval", "--model", str(model), "--tasks", "niah_single", "--samples", "1"]
    return _fails(argv, message, capsys)


def test_malformed_config_json(llama_dir, capsys):
    (llama_dir / "config.json").write_text('{"model_type": "llama",')
    _model(llama_dir, capsys, f"'{llama_dir / 'config.json'}' is not valid JSON (line 1")


def test_config_json_that_is_not_an_object_or_not_utf8(llama_dir, capsys):
    (llama_dir / "config.json").write_text("[1, 2]")
    _model(llama_dir, capsys, "must hold a JSON object, got list")
    (llama_dir / "config.json").write_bytes(b'{"model_type": "ll\xffama"}')
    _model(llama_dir, capsys, "is not UTF-8 text")


def test_config_with_wrong_values(llama_dir, capsys):
    config = json.loads((llama_dir / "config.json").read_text())
    config["num_attention_heads"] = 7  # not a multiple of the 3 KV heads
    (llama_dir / "config.json").write_text(json.dumps(config))
    err = _model(llama_dir, capsys, "")
    assert "num_q_heads=7 is not a multiple of num_kv_heads=3" in err or "cannot be read" in err, err


@pytest.mark.parametrize(("field", "value"), [("max_position_embeddings", -1),
                                            ("num_hidden_layers", 0), ("vocab_size", 0)])
def test_config_sizes_that_are_not_positive_integers(llama_dir, capsys, field, value):
    config = json.loads((llama_dir / "config.json").read_text())
    config[field] = value
    (llama_dir / "config.json").write_text(json.dumps(config))
    _model(llama_dir, capsys, f"config.json': {field} must be a positive integer, got {value!r}")


def test_a_broken_tokenizer_fails_before_the_weights(llama_dir, capsys):
    (llama_dir / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    _model(llama_dir, capsys, f"cannot load the tokenizer in '{llama_dir}'")


def test_config_without_weights(llama_dir, capsys):
    (llama_dir / "model.safetensors").unlink()
    _model(llama_dir, capsys, f"model directory '{llama_dir}' has a config.json but no weights")


@pytest.mark.parametrize(("damage", "message"), [
    (lambda raw: raw[: len(raw) // 2], "is corrupt or truncated: tensor"),
    (lambda raw: raw[:4], "is corrupt or truncated: header of"),
    (lambda raw: (10**12).to_bytes(8, "little") + raw[8:],
     "is corrupt or truncated: header of 1000000000000"),
    (lambda raw: raw[:8] + b"#" + raw[9:], "is corrupt or truncated: its header is not JSON"),
])
def test_corrupt_safetensors(llama_dir, capsys, damage, message):
    weights = llama_dir / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    _model(llama_dir, capsys, f"weight file '{weights}' {message}")


def test_corrupt_gguf(tmp_path, capsys, monkeypatch):
    from icecache.integrations.hf.loader import embedded_gguf_path

    monkeypatch.setenv("ICECACHE_CACHE_DIR", str(tmp_path / "cache"))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model" * 100)
    _model(junk, capsys, f"model file '{junk}' is not a GGUF file")
    head = embedded_gguf_path().read_bytes()[:1 << 16]  # a valid start, cut short
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(head)
    _model(cut, capsys, f"cannot read the GGUF model '{cut}' (corrupt or unsupported)")
    assert not any((tmp_path / "cache").rglob("config.json"))  # no half-converted copy kept


# ----- tasks files ---------------------------------------------------------------------------------------
def task_row(i, **kw):
    context = "The grass is green. " * 20 + f"The code word is amber{i}. " + "The sky is blue. " * 20
    row = {"id": f"s{i}", "context": context, "question": "What is the code word?", "answers": [f"amber{i}"],
           "max_new_tokens": 4}
    row.update(kw)
    return json.dumps(row)


@pytest.mark.parametrize(("line", "message"), [
    (task_row(1, answers={"4417": True}), "tasks.jsonl:2: field 'answers' must be a non-empty list of "
                                          "non-empty strings, got {'4417': True}"),
    (task_row(1, answers="4417"), "tasks.jsonl:2: field 'answers' must be a non-empty list"),
    (task_row(1, answers=[4417]), "tasks.jsonl:2: field 'answers' must be a non-empty list"),
    (task_row(1, max_new_tokens=True),
     "tasks.jsonl:2: field 'max_new_tokens' must be an integer in [1, 4096], got True"),
    (task_row(1, max_new_tokens=2.0), "field 'max_new_tokens' must be an integer"),
    (task_row(1, max_new_tokens=0), "field 'max_new_tokens' must be an integer"),
    (task_row(1, max_new_tokens=10**9), "field 'max_new_tokens' must be an integer"),
    (task_row(1, id=3), "tasks.jsonl:2: field 'id' must be a string, got 3"),
    (task_row(1, id=" "), "tasks.jsonl:2: field 'id' is empty"),
])
def test_bad_tasks_file_field(tmp_path, capsys, line, message):
    path = tmp_path / "tasks.jsonl"
    path.write_text(task_row(0) + "\n" + line + "\n")
    _fails(["eval", "--tasks-file", str(path)], message, capsys)


def test_tasks_file_not_utf8_or_a_directory(tmp_path, capsys):
    path = tmp_path / "tasks.jsonl"
    latin1 = task_row(1).encode().replace(b"amber1", b"amb\xe9r1")
    path.write_bytes(task_row(0).encode() + b"\n" + latin1 + b"\n")
    _fails(["eval", "--tasks-file", str(path)], "tasks.jsonl:2: not UTF-8 text (byte", capsys)
    _fails(["eval", "--tasks-file", str(tmp_path)], f"tasks file '{tmp_path}' is not a file", capsys)


# ----- merge ---------------------------------------------------------------------------------------------
def _detail(**kw):
    d = {"sample_id": "s0", "task": "t", "policy": "full", "selector": "full", "budget": None,
         "prompt_tokens": 10, "correct": True, "score": 1.0, "output": "x", "new_tokens": 1, "batch": 0,
         "batch_size": 1, "index_build_s": 0.0, "device_kv_bytes": 1, "full_kv_bytes": 1,
         "device_fraction": 1.0,
         "step_s": {"index_query": 0.0, "page_load": 0.0, "attention": 0.0, "rest": 0.0, "total": 0.0}}
    d.update(kw)
    return d


@pytest.mark.parametrize(("detail", "message"), [
    (_detail(correct="no"), "field 'correct' must be true or false, got 'no'"),
    (_detail(score=7.5), "field 'score' must be a number in [0, 1], got 7.5"),
    (_detail(score=True), "field 'score' must be a number in [0, 1], got True"),
    (_detail(budget=-3), "field 'budget' must be a positive integer or null, got -3"),
    (_detail(batch="0"), "field 'batch' must be a non-negative integer, got '0'"),
    (_detail(step_s={"total": 1.0}), "field 'step_s' must be an object of non-negative seconds with"),
    (_detail(step_s={**_detail()["step_s"], "total": -1.0}),
     "field 'step_s' must be an object of non-negative"),
    (_detail(index_build_s=float("inf")), "field 'index_build_s' must be a non-negative number, got inf"),
    ({k: v for k, v in _detail().items() if k != "output"}, "it lacks field(s) ['output']"),
    (_detail(extra=1), "unknown field(s) ['extra']"),
])
def test_merge_refuses_bad_results(tmp_path, capsys, detail, message):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"context": 10, "samples_detail": [_detail(sample_id="ok"), detail]}))
    _fails(["merge", str(path)], f"results file '{path}': samples_detail[1] is malformed: " + message, capsys)


def test_merge_refuses_a_context_that_is_not_a_token_count(tmp_path, capsys):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"context": "x", "samples_detail": [_detail()]}))
    _fails(["merge", str(path)], f"results file '{path}': 'context' must be a positive number of tokens or "
                                 "null, got 'x'", capsys)


def test_merge_refuses_unreadable_inputs_and_an_unknown_reference(tmp_path, capsys):
    raw = tmp_path / "raw.json"
    raw.write_bytes(b'{"samples_detail": ["\xff"]}')
    _fails(["merge", str(raw)], f"results file '{raw}' is not UTF-8 text", capsys)
    _fails(["merge", str(tmp_path)], f"results file '{tmp_path}' is not a file", capsys)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"context": 10, "samples_detail": [_detail(), _detail(policy="quest@64")]}))
    _fails(["merge", str(good), "--reference", "bogus"],
           "--reference 'bogus' is not a policy of the inputs; they hold ['full', 'quest@64']", capsys)
    assert main(["merge", str(good), "--reference", "quest@64"]) == 0


# ----- bench transfer ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("argv", "message"), [
    (["--pages", "0"], "--pages must be positive, got 0"),
    (["--pages", "-3"], "--pages must be positive, got -3"),
    (["--host-pages", "0"], "--host-pages must be positive, got 0"),
    (["--disk-pages", "0"], "--disk-pages must be positive, got 0"),
    (["--head-dim", "0"], "--head-dim must be positive, got 0"),
    (["--run-length", "0"], "--run-length must be positive, got 0"),
    (["--repeats", "0"], "--repeats must be positive, got 0"),
    (["--threads", "0"], "--threads must be positive, got 0"),
    (["--seed", "-1"], "--seed must be non-negative, got -1"),
    (["--host-pages", "4", "--pages", "8"], "--host-pages 4 must hold at least --pages 8"),
    (["--page-size", "3"], "page sizes must be powers of two (--page-size, --sweep-page-tokens), got 3"),
    (["--page-size", "0"], "page sizes must be powers of two"),
    (["--sweep-page-tokens", "16,x"], "--sweep-page-tokens must be comma-separated integers, got '16,x'"),
    (["--sweep-page-tokens", "12"], "got 12"),
    (["--dtype", "int8"], "--dtype 'int8' is not supported; use fp16, bf16 or fp32"),
    (["--device", "meta"], "--device 'meta': the cache runs on cpu or cuda"),
    (["--disk-dir", "/no/such/dir"], "--disk-dir '/no/such/dir' does not exist"),
    (["--disk-dir", ""], "--disk-dir is empty"),
    (["--host-pages", "100000000"], "--host-pages 100000000 x 8192 B pages need 762.9 GiB, more than half"),
    (["--disk-pages", "1000000000000"], "--disk-pages 1000000000000 x 8192 B pages need"),
])
def test_bad_bench_transfer_options(capsys, argv, message):
    _fails(["bench", "transfer", *argv], message, capsys)


# ----- bench decode, index, memory (no checks before issue 13's probe: tracebacks, a silent fallback) ----
@pytest.mark.parametrize(("argv", "message"), [
    (["decode", "--contexts", "0"], "--contexts values must be at least 1, got 0 in '0'"),
    (["decode", "--contexts", "a,b"], "--contexts must be comma-separated integers, got 'a,b'"),
    (["decode", "--contexts", ""], "--contexts names no values, got ''"),
    (["decode", "--kv-heads", "0"], "--kv-heads must be at least 1, got 0"),
    (["decode", "--page-size", "3"], "--page-size must be a power of two, got 3"),
    (["decode", "--selector", "nope"], "unknown selector 'nope'; available selectors:"),  # was: quest
    (["decode", "--kernel", "nope"], "unknown kernel 'nope'; available kernels:"),
    (["decode", "--threads", "0"], "--threads must be positive, got 0"),
    (["decode", "--contexts", "10000000000"], "--contexts 10000000000 with 8 KV heads of 128 needs"),
    (["index", "--dim", "0"], "--dim must be at least 1, got 0"),
    (["index", "--index", "nope"], "unknown index 'nope'; available indexes: "),
    (["index", "--repeats", "0"], "--repeats must be at least 1, got 0"),
    (["memory", "--contexts", "9000"], "--contexts 9000 is longer than the model allows: 8192 positions"),
    (["memory", "--decode-steps", "0"], "--decode-steps must be at least 1, got 0"),
    (["memory", "--task", "nope"], "unknown task 'nope'; available tasks:"),
    (["continuation", "--docs", "100000"], "--docs 100000 is more than 256 built-in documents"),
])
def test_bad_bench_options(capsys, argv, message):
    _fails(["bench", *argv], message, capsys)


# ----- prompts measured with the tokenizer alone, before the weights load --------------------------------
def test_a_tasks_file_prompt_longer_than_the_model_fails_before_it_loads(tmp_path, capsys):
    path = tmp_path / "tasks.jsonl"
    path.write_text(task_row(0, context="word " * 9000) + "\n")
    err = _fails(["eval", "--tasks-file", str(path)], "sample 's0': prompt of ", capsys)
    assert "plus 4 new tokens exceeds the model's 8192 positions" in err


def test_a_continuation_document_too_short_fails_before_the_model_loads(tmp_path, capsys):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"id": "tiny", "text": "hi"}) + "\n")
    _fails(["bench", "continuation", "--docs-file", str(path), "--prompt-tokens", "64",
            "--continuation-tokens", "8", "--policy", "quest"],
           "documents shorter than --prompt-tokens 64 + --continuation-tokens 8 + 1 = 73 tokens: 'tiny' (1 "
           "tokens)", capsys)
