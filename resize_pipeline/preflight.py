"""Checked in the driver before DEST is touched: the device, the decoder and the resizer, resolved once.

`resolve(config)` turns the user's choices (``--device auto``, ``--decoder auto``, ``--resizer
learned:PATH``, ``--precision auto``) into one `Resolved` decision that every worker builds exactly
(a worker never decides on its own, so all of them write the same bytes). Anything that cannot work
raises `ConfigError` with a one-line message: a missing GPU, DALI not installed, a checkpoint that
is missing, unreadable or fails its sha256. What changes the output bytes (decoder mode, precision,
the checkpoint's sha256, CPU or GPU for the CNN, the JPEG codec, the CNN's convolution algorithms)
goes into the run fingerprint.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from resize_pipeline.devices import gpu_count, parse_device
from resize_pipeline.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Resolved:
    """What the job runs with, decided once.

    Attributes:
        device: ``cpu``, ``cuda`` (every visible GPU, one worker process each) or ``cuda:N``.
        decoder: ``pillow``, ``dali-cpu`` or ``dali-mixed``.
        fused: DALI decodes, crops and resizes (to the learned resizer's input, or to the output
            size for a classical filter) in one graph (`stages_fused`).
        precision: the learned resizer's arithmetic (``fp32``, ``bf16``, ``fp16``); None otherwise.
        resizer: what was checked about the resizer (name; for a learned one path, sha256, input scale).
        gpus: GPUs visible to the driver.
        jpeg_backend: the JPEG codec every worker encodes with (``opencv`` or ``pillow``, `encode.Encoder`);
            None when the output is not JPEG. The two write the same bytes with the libjpeg-turbo builds
            tested here, but they bundle their own builds: it is fingerprinted, and decided once.
    """

    device: str
    decoder: str
    fused: bool
    precision: str | None = None
    resizer: dict[str, Any] = field(default_factory=dict)
    gpus: int = 0
    jpeg_backend: str | None = None

    @property
    def uses_gpu(self) -> bool:
        return self.device != "cpu"

    def output_dict(self) -> dict[str, Any]:
        """The resolved choices that decide the bytes written (part of the run fingerprint)."""
        out: dict[str, Any] = {"decoder": self.decoder, "fused": self.fused}
        if self.precision is not None:
            out.update(precision=self.precision, resizer_sha256=self.resizer.get("sha256", ""),
                       resizer_device="cuda" if self.uses_gpu else "cpu")
            if self.uses_gpu:  # cuDNN picks its algorithms by heuristics, deterministically (cuda_runner)
                out["cnn_algorithms"] = "cudnn-deterministic"
        if self.jpeg_backend is not None:
            out["jpeg_backend"] = self.jpeg_backend
        return out

    def unused_output_options(self) -> list[str]:
        """Output options of the config that cannot change this job's bytes (left out of its run
        fingerprint, so that changing them never blocks a resume): the learned resizer's when it is
        not used, the GPU CNN's when it runs on the CPU, the other decoders' (`DecoderSpec`)."""
        from resize_pipeline.decode import DECODER_SPECS

        unused = []
        if self.precision is None:
            unused += ["precision", "compile", "channels_last", "cuda_graphs"]
        elif not self.uses_gpu:
            unused.append("cuda_graphs")
        running = DECODER_SPECS[self.decoder].output_options
        unused += [o for spec in DECODER_SPECS.values() for o in spec.output_options if o not in running]
        return sorted(set(unused))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _resolve_device(spec: str, wants_gpu: bool, gpus: int) -> str:
    try:
        kind, index = parse_device(spec)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if kind == "auto":
        return "cuda" if wants_gpu and gpus > 0 else "cpu"
    if kind == "cpu":
        return "cpu"
    if gpus == 0:
        raise ConfigError(f"--device {spec}: no CUDA GPU is visible to this process")
    if index is not None and index >= gpus:
        raise ConfigError(f"--device {spec}: no such GPU ({gpus} visible: cuda:0..cuda:{gpus - 1})")
    if not wants_gpu:
        log.warning("--device %s: nothing in this job runs on a GPU (Pillow decoder, classical resizer)", spec)
        return "cpu"
    return spec


def _resolve_decoder(name: str, device: str, dali_available: bool | None = None) -> str:
    """``--decoder`` -> a buildable decoder of the registry (`decode.DECODER_SPECS`). `dali_available`:
    whether the workers can import DALI (the Ray engine asks an actor); default: this process."""
    from resize_pipeline.decode import decoder_spec, resolve_decoder
    from resize_pipeline.decode.dali_graph import INSTALL_HINT

    if name == "pillow":
        return "pillow"
    dali = resolve_decoder("dali", device)
    if dali_available is None:
        dali_available = decoder_spec(dali).available()
    if not dali_available:
        if name == "dali":
            raise ConfigError(f"--decoder dali: {INSTALL_HINT}")
        log.info("DALI not installed; decoding with Pillow (%s)", INSTALL_HINT)
        return "pillow"
    return dali


def _check_learned(spec: str) -> dict[str, Any]:
    """Load the checkpoint named by ``learned[:PATH]`` on the CPU: found, readable, sha256 as recorded."""
    try:
        from resize_pipeline.learned.export import load_resizer_module
        from resize_pipeline.learned.inference import DEFAULT_WEIGHTS
    except ImportError as exc:
        raise ConfigError(f"--resizer {spec} needs torch: {exc}") from None
    path = spec.split(":", 1)[1] if ":" in spec else str(DEFAULT_WEIGHTS)
    try:
        _, meta = load_resizer_module(path)
    except Exception as exc:  # noqa: BLE001 - any failure to load is a config error, said in one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"--resizer {spec}: cannot load the resizer: {first}") from None
    return {"name": "learned", "path": path, "sha256": str(meta.get("sha256", "")),
            "input_scale": float(meta["input_scale"])}


def _resolve_precision(requested: str, device: str) -> str:
    """Decided here, on the driver, so that all workers agree; the one function
    (`learned.precision.resolve_precision`) that `LearnedResizer(precision="auto")` also asks."""
    from resize_pipeline.learned.precision import resolve_precision

    return resolve_precision(requested, device)


def check(config) -> dict[str, Any]:
    """What can be checked without knowing the machine that will run the job: the device string,
    DALI installed when ``--decoder dali`` asks for it, the resizer (a learned checkpoint is loaded
    and its sha256 verified). Returns what was learnt about the resizer."""
    from resize_pipeline.decode.dali_graph import INSTALL_HINT, dali_installed

    try:
        parse_device(config.device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    # on Ray the actors' environment decides (`resolve(worker_env=...)`), not the driver's
    if config.decoder == "dali" and config.engine != "ray" and not dali_installed():
        raise ConfigError(f"--decoder dali: {INSTALL_HINT}")
    if config.resizer.startswith("learned"):
        return _check_learned(config.resizer)
    return {"name": config.resizer}


def _resolve_jpeg_backend(config, opencv: bool | None) -> str | None:
    """The JPEG codec of the whole job (`encode.Encoder`): OpenCV where the workers have it."""
    if config.encode != "jpg":
        return None
    if opencv is None:
        from resize_pipeline.encode import opencv_available

        opencv = opencv_available()
    return "opencv" if opencv else "pillow"


def worker_environment_here() -> dict[str, bool]:
    """What this process can import among the packages that decide a job's choices: DALI (imported
    for real: a broken install counts as missing) and OpenCV. Run on a Ray actor by
    `workers.ray_engine.worker_environment`, so the workers' environment decides, not the driver's."""
    env: dict[str, bool] = {}
    try:
        import nvidia.dali  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure to import it: the workers have no DALI
        env["dali"] = False
    else:
        env["dali"] = True
    from resize_pipeline.encode import opencv_available

    env["opencv"] = opencv_available()
    return env


def resolve(config, gpus: int | None = None, checked: dict[str, Any] | None = None,
            worker_env: dict[str, Any] | None = None) -> Resolved:
    """Check and resolve `config`'s device, decoder and resizer; `ConfigError` if they cannot work.

    `gpus`: GPUs a worker can use (the Ray engine passes its cluster's); default: this machine's.
    `checked`: `check(config)`'s result, when it ran already.
    `worker_env`: what the workers can import (``{"dali": bool, "opencv": bool}``) when they do not run
    in this environment (the Ray engine asks an actor: `workers.ray_engine.worker_environment`).
    """
    from resize_pipeline.stages_fused import can_fuse

    resizer = checked if checked is not None else check(config)
    learned = config.resizer.startswith("learned")
    gpus = gpu_count() if gpus is None else gpus
    device = _resolve_device(config.device, learned or config.decoder != "pillow", gpus)
    env = worker_env or {}
    decoder = _resolve_decoder(config.decoder, device, env.get("dali"))
    precision = _resolve_precision(config.precision, device) if learned else None
    if not learned and device != "cpu" and decoder == "pillow":
        device = "cpu"  # nothing left for the GPU to do
    resolved = Resolved(device, decoder, can_fuse(decoder, config.resizer), precision, resizer, gpus,
                        _resolve_jpeg_backend(config, env.get("opencv")))
    log.info("resolved: %s", resolved)
    return resolved
