"""`optforge bench --fsdp` end to end on 2 gloo ranks at a tiny size: the files, their
structure and the collectives counted per step (no timing asserts)."""

import json

import pytest

pytest.importorskip("torch")


def test_fsdp_benchmark_writes_json_and_table(tmp_path):
    from optforge.bench.fsdp import ORDER, run_fsdp

    # Linear(13, 7), Linear(7, 5): 7 and 5 rows split 4 / 3 and 3 / 2 over the ranks.
    result = run_fsdp(tmp_path, ranks=2, repeat=2, widths=(13, 7, 5), timeout_s=60)
    on_disk = json.loads((tmp_path / "fsdp-2ranks.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(result["rows"]))
    assert not (tmp_path / "fsdp-raw.json").exists()
    assert on_disk["command"] == f"optforge bench --fsdp --ranks 2 --repeat 2 --out-dir {tmp_path}"
    assert on_disk["model"] == {
        "widths": [13, 7, 5],
        "parameters": 13 * 7 + 7 + 7 * 5 + 5,
        "tensors": 4,
        "local_elements": [4 * 13 + 4 + 3 * 7 + 3, 3 * 13 + 3 + 2 * 7 + 2],
    }
    rows = {r["contender"]: r for r in on_disk["rows"]}
    assert list(rows) == ORDER
    timed = {name: r for name, r in rows.items() if "failed" not in r}
    # torch's foreach AdamW is the baseline, and the optforge classes step DTensors
    assert {"torch AdamW foreach", "optforge.torch.AdamW", "optforge.torch.Lamb"} <= set(timed)
    assert "optforge.torch.Adafactor" in timed
    assert timed["torch AdamW foreach"]["ratio_to_torch_adamw_foreach"] == 1.0
    for name, r in timed.items():
        assert r["ms"] > 0 and len(r["ms_per_rank"]) == 2, name
        assert len(on_disk["per_step_s"][name]) == 2 and len(on_disk["per_step_s"][name][0]) == 2
    # Elementwise steps make no collective; Lamb one all-reduce of 3 float64 values per split
    # parameter; Adafactor's 2-D matrices three rounds.
    for name in ("torch AdamW foreach", "optforge.torch.AdamW"):
        assert (timed[name]["all_reduces"], timed[name]["bytes_all_reduced"], timed[name]["collectives"]) == (
            0,
            0,
            0,
        ), name
    assert timed["optforge.torch.Lamb"]["all_reduces"] == 1
    assert timed["optforge.torch.Lamb"]["bytes_all_reduced"] == 4 * 3 * 8
    assert timed["optforge.torch.Adafactor"]["all_reduces"] == 3
    assert timed["optforge.torch.Adafactor"]["bytes_all_reduced"] > 0
    for name, spec_bytes in (("optforge.torch.AdamW", 28), ("optforge.torch.Lamb", 40)):
        r = timed[name]
        assert r["same_traffic_limit_ms"] > 0 and r["fraction_of_limit"] > 0, name
        assert r["bytes_moved_per_rank"] == [spec_bytes * n for n in on_disk["model"]["local_elements"]]
    for name in ("torch AdamW fused", "torch Adafactor"):  # a time, or why it failed
        assert "ms" in rows[name] or rows[name]["failed"], name
    text = (tmp_path / "fsdp-2ranks.txt").read_text()
    assert text.startswith(f"# {on_disk['command']}\n")
    assert all(name in text for name in ORDER)


def test_cli_dispatches_fsdp(tmp_path, monkeypatch):
    import optforge.bench.fsdp
    from optforge.compiler.cli import main

    calls = []
    monkeypatch.setattr(optforge.bench.fsdp, "run_fsdp", lambda *a, **k: calls.append((a, k)))
    args = ["bench", "--fsdp", "--ranks", "3", "--repeat", "5", "--out-dir", str(tmp_path)]
    assert main(args) == 0
    assert calls == [((tmp_path,), {"ranks": 3, "repeat": 5})]
