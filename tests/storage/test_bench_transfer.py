import json

from icecache.cli.main import main


def test_transfer_bench_writes_every_ratio(tmp_path, capsys):
    out = tmp_path / "transfer.json"
    rc = main(["bench", "transfer", "--json", str(out), "--pages", "8", "--host-pages", "32",
               "--disk-pages", "32", "--page-size", "4", "--head-dim", "8", "--run-length", "4",
               "--repeats", "2", "--disk-dir", str(tmp_path)])
    assert rc == 0
    payload = json.loads(out.read_text())
    for key in ("bulk_vs_memcpy", "bulk_vs_per_page", "disk_clustered_vs_sequential",
                "disk_clustered_vs_scattered", "bulk_vs_memcpy_fragmented"):
        assert payload[key] > 0, key
    assert payload["loaded_pages_match"] is True
    if payload["device_is_cpu_standin"]:
        assert payload["transfer"] == "staged" and payload["load_via"] == {"staged": "direct",
                                                                           "staged_fragmented": "staged"}
    else:
        assert payload["load_via"]["uva"] == "uva" and payload["load_via"]["staged_fragmented"] == "staged"
    assert payload["device_is_cpu_standin"] == (payload["machine"]["cuda"] is False)
    assert "bulk_vs_memcpy" in capsys.readouterr().out
    assert not list(tmp_path.glob("icecache-bench-*"))  # the disk file's directory is cleaned up
