"""Config errors are found in the driver, before DEST is touched: exit 2, one line, whatever the
engine, worker count and parallelism; and what the driver resolves is what the workers build."""

from __future__ import annotations

import re
import shutil

import pytest

from resize_pipeline.cli import main
from resize_pipeline.config import ConvertConfig
from resize_pipeline.errors import ConfigError
from resize_pipeline.preflight import resolve

ENGINES = {
    "in-process": ["--workers", "1"],
    "2 processes": ["--workers", "2", "--parallelism", "process"],
    "2 threads": ["--workers", "2", "--parallelism", "thread"],
    "ray": ["--engine", "ray", "--workers", "2"],
}


def _corrupt_checkpoint(tmp_path) -> str:
    from resize_pipeline.learned.inference import DEFAULT_WEIGHTS

    bad = tmp_path / "ckpt"
    shutil.copytree(DEFAULT_WEIGHTS, bad)
    weights = bad / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    return str(bad)


def _nan_checkpoint(tmp_path) -> str:
    """The bundled checkpoint with NaN in one tensor, written back with a valid sha256 in config.json:
    what a diverged training run or a hand edit leaves (issue 20, finding 2)."""
    import hashlib
    import json

    import torch
    from safetensors.torch import load_file, save_file

    from resize_pipeline.learned.inference import DEFAULT_WEIGHTS

    bad = tmp_path / "nan_ckpt"
    shutil.copytree(DEFAULT_WEIGHTS, bad)
    weights = bad / "model.safetensors"
    state = load_file(str(weights))
    name = next(k for k in state if k.endswith("weight"))
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, str(weights), metadata={"format": "resize_pipeline.learned_resizer"})
    meta = json.loads((bad / "config.json").read_text())
    meta["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (bad / "config.json").write_text(json.dumps(meta))
    return str(bad)


def _nan_torchscript(tmp_path) -> str:
    import torch

    from resize_pipeline.learned.export import export_torchscript
    from resize_pipeline.learned.model import create_resizer

    net = create_resizer("resizer_n16_r1_lumahp").eval()
    path = export_torchscript(net, tmp_path / "r.pt")
    module = torch.jit.load(str(path))
    with torch.no_grad():
        next(iter(module.parameters())).fill_(float("inf"))
    torch.jit.save(module, str(path))
    return str(path)


def _has_gpu() -> bool:
    from resize_pipeline.devices import gpu_count

    return gpu_count() > 0


CASES = {
    "missing checkpoint": (lambda tmp: ["--resizer", "learned:/nonexistent/ckpt"], "cannot load the resizer"),
    "corrupt checkpoint": (lambda tmp: ["--resizer", f"learned:{_corrupt_checkpoint(tmp)}"], "sha256"),
    "NaN checkpoint": (lambda tmp: ["--resizer", f"learned:{_nan_checkpoint(tmp)}"], "not finite (nan/inf)"),
    "inf TorchScript": (lambda tmp: ["--resizer", f"learned:{_nan_torchscript(tmp)}"], "not finite (nan/inf)"),
    "bad device": (lambda tmp: ["--device", "bogus"], "device"),
    "no GPU": (lambda tmp: ["--device", "cuda", "--resizer", "learned"], "no CUDA GPU"),
    "GPU index": (lambda tmp: ["--device", "cuda:7", "--decoder", "dali"], "cuda:7"),
    "bad colour": (lambda tmp: ["--background", "#zzzzzz"], "--background"),
    "DALI missing": (lambda tmp: ["--decoder", "dali"], "DALI is not installed"),
}


@pytest.mark.parametrize("engine", [pytest.param(e, marks=pytest.mark.ray) if e == "ray" else e for e in sorted(ENGINES)])
@pytest.mark.parametrize("case", sorted(CASES))
def test_config_error_exits_2_and_leaves_dest_untouched(case, engine, image_folder, tmp_path, capsys, monkeypatch):
    if engine == "ray":
        pytest.importorskip("ray")
    if case in ("no GPU", "GPU index") and _has_gpu():
        pytest.skip("checks a machine without a GPU")
    if case == "no GPU" and engine == "ray":
        pytest.skip("a cluster's GPUs are known once connected (Ray then prints its own start-up lines); "
                    "the decision itself is tested in test_resolution_on_a_gpu_machine_decides_for_the_workers")
    if case == "DALI missing" and engine == "ray":
        _hide_dali_from_ray_workers(tmp_path, monkeypatch)  # the actors decide (finding 10), not this process
    elif case == "DALI missing":
        from resize_pipeline.decode import dali_graph

        monkeypatch.setattr(dali_graph, "dali_installed", lambda: False)
    if case == "GPU index" and engine == "ray":
        expected = "each actor gets its own GPU"
    else:
        expected = CASES[case][1]
    args, _ = CASES[case]
    dest = tmp_path / "out"
    rc = main(["convert", str(image_folder), str(dest), "-q", *args(tmp_path), *ENGINES[engine]])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if engine == "ray" and case == "DALI missing":  # decided once connected: Ray's own start-up lines come first
        lines = [ln for ln in lines if not re.match(r"\d{4}-\d\d-\d\d [\d:,]+\s+(INFO|WARNING) \S+ -- ", ln)]
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("resize-pipeline") and expected in lines[0], lines[0]
    assert not dest.exists(), "a config error must not create DEST"


def _hide_dali_from_ray_workers(tmp_path, monkeypatch) -> None:
    """Ray workers started from here see an ``nvidia`` package without DALI (a package that fails to
    import, first on their PYTHONPATH); this process keeps its own, working DALI."""
    fake = tmp_path / "no_dali" / "nvidia"
    (fake / "dali").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "dali" / "__init__.py").write_text("raise ImportError('DALI is not installed on this worker')\n")
    monkeypatch.setenv("PYTHONPATH", str(fake.parent))


@pytest.mark.ray
def test_ray_asks_the_workers_whether_they_have_dali(image_folder, tmp_path, monkeypatch):
    """Finding 10: with the Ray engine the actors' environment decides whether DALI can be used. A
    driver without DALI (here: made to look so) runs ``--decoder dali`` on workers that have it; the
    workers say what they built."""
    pytest.importorskip("ray")
    from resize_pipeline.decode import dali_graph

    monkeypatch.setattr(dali_graph, "dali_installed", lambda: False)
    dest = tmp_path / "out"
    rc = main(["convert", str(image_folder), str(dest), "-q", "--size", "32", "--decoder", "dali",
               "--engine", "ray", "--workers", "1"])
    assert rc == 0
    import json

    comp = json.loads((dest / "_manifest.json").read_text())["components"]
    assert comp["resolved"]["decoder"] == "dali-cpu" and comp["decoder"]["name"] == "dali-cpu"


def test_a_corrected_rerun_is_not_refused(image_folder, tmp_path, capsys):
    """The bug this guards against: a failed first run left _run.json, refusing the corrected one."""
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    assert main(["convert", str(image_folder), str(dest), "-q", "--resizer", "learned:/typo"]) == 2
    assert sorted(p.name for p in dest.iterdir()) == ["notes.txt"]
    assert main(["convert", str(image_folder), str(dest), "-q", "--size", "32"]) == 0
    assert (dest / "_manifest.json").exists() and (dest / "notes.txt").read_text() == "mine"


def test_resolution_without_gpu():
    if _has_gpu():
        pytest.skip("checks a machine without a GPU")
    r = resolve(ConvertConfig("/s", "/d"))
    assert (r.device, r.decoder, r.fused, r.precision) == ("cpu", "pillow", False, None)
    r = resolve(ConvertConfig("/s", "/d", decoder="auto", resizer="bilinear"))
    assert (r.device, r.decoder, r.fused) == ("cpu", "dali-cpu", True)
    r = resolve(ConvertConfig("/s", "/d", decoder="auto", resizer="area"))
    assert r.fused is False  # DALI has no area filter
    r = resolve(ConvertConfig("/s", "/d", resizer="learned", precision="fp32"))
    assert (r.device, r.precision) == ("cpu", "fp32") and len(r.resizer["sha256"]) == 64


def test_resolution_on_a_gpu_machine_decides_for_the_workers():
    """With GPUs (as the Ray engine reports a cluster's), auto picks the GPU path; fp16 on the GPU."""
    r = resolve(ConvertConfig("/s", "/d", decoder="auto", resizer="learned"), gpus=2)
    assert (r.device, r.decoder, r.fused, r.precision) == ("cuda", "dali-mixed", True, "fp16")
    assert resolve(ConvertConfig("/s", "/d", device="cuda:1", decoder="dali"), gpus=2).device == "cuda:1"
    # a classical job on the Pillow decoder has nothing for the GPU to do
    assert resolve(ConvertConfig("/s", "/d", device="cuda"), gpus=2).device == "cpu"
    with pytest.raises(ConfigError, match="no such GPU"):
        resolve(ConvertConfig("/s", "/d", device="cuda:2", decoder="dali"), gpus=2)


def test_precision_is_part_of_the_fingerprint_only_where_it_matters():
    from resize_pipeline.manifest import run_record

    items = None  # the listing's extent plays no part in the fingerprint
    base = ConvertConfig("/s", "/d")
    a = run_record(base, resolve(base, gpus=0), items)
    b = run_record(base.replace(precision="fp16", hw_decoder_load=0.9), resolve(base, gpus=0), items)
    assert a["fingerprint"] == b["fingerprint"]  # unused knobs do not block a resume
    learned = base.replace(resizer="learned")
    c = run_record(learned.replace(precision="fp32"), resolve(learned.replace(precision="fp32"), gpus=0), items)
    d = run_record(learned.replace(precision="bf16"), resolve(learned.replace(precision="bf16"), gpus=0), items)
    assert c["fingerprint"] != d["fingerprint"]
    assert c["config"]["resolved"]["precision"] == "fp32"


def test_dest_that_is_a_file_is_one_clear_line(image_folder, tmp_path, capsys):
    dest = tmp_path / "out.tar"
    dest.write_bytes(b"not a folder")
    assert main(["convert", str(image_folder), str(dest), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is a file, not a folder" in err, err
    assert dest.read_bytes() == b"not a folder"


def test_images_per_second_counts_only_this_runs_work(image_folder, tmp_path):
    from resize_pipeline.conversion import convert

    cfg = ConvertConfig(str(image_folder), str(tmp_path / "out"), size=32, samples_per_shard=4, quiet=True)
    first = convert(cfg)
    assert first.converted == 10 and first.images_per_second > 0
    again = convert(cfg)  # every shard reused: nothing converted, so no rate to boast
    assert (again.resumed_shards, again.converted, again.images_per_second) == (3, 0, 0.0)
    assert again.manifest["run"]["converted"] == 0
