"""`nnunet-supervise doctor [CONFIG]`: what an nnU-Net problem report needs, and the known-bad combinations.

The facts are gathered here (versions by importlib.metadata, nothing imported; torch, its CUDA and cuDNN in a short
subprocess, as the daemon never imports torch; the driver by nvidia-smi or NVML; /dev/shm; the CPUs and memory this
process is really given; free disk under each nnU-Net folder) into a `Facts`, and then judged by `KNOWN`: one entry
per known problem, each with the issue that reports it. A new known problem is one more entry; every check is a
plain function of the facts, so the tests hand it made-up ones.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from supervisor.config import PATH_ENV_VARS
from supervisor.errors import SupervisorError
from supervisor.evidence.allocation import read_allocation
from supervisor.evidence.shm import SHM, shm_space

# What an nnU-Net issue asks for, by distribution name (importlib.metadata: nothing of them is imported here).
DISTRIBUTIONS = ("nnunetv2", "torch", "batchgenerators", "batchgeneratorsv2", "dynamic-network-architectures",
                 "acvl-utils", "threadpoolctl", "blosc2", "SimpleITK", "nibabel", "numpy", "scipy", "nvidia-ml-py",
                 "nnunet-supervisor")
# The environment an nnU-Net report needs (no other variable: the report is meant to be posted).
_ENV_NAMES = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
              "OPENBLAS_NUM_THREADS", "PYTORCH_CUDA_ALLOC_CONF", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "CC", "CXX",
              "SLURM_JOB_ID", "SLURM_CPUS_PER_TASK", "SLURM_MEM_PER_NODE", "SLURM_MEM_PER_CPU")
PROBE_TIMEOUT_S = 180.0  # importing torch on a cold network file system takes a minute; CUDA init a few seconds

# Runs in a subprocess: imports torch (and numpy, threadpoolctl, as nnU-Net's workers do) and prints one JSON object.
PROBE = r"""
import json, sys, warnings
out = {"python": sys.version.split()[0]}
caught = []
def _show(message, category, filename, lineno, file=None, line=None):
    caught.append(f"{category.__name__}: {message}")
warnings.showwarning = _show
try:
    import torch
    out["version"] = torch.__version__
    out["cuda"] = torch.version.cuda
    out["hip"] = getattr(torch.version, "hip", None)
    out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    out["cuda_available"] = torch.cuda.is_available()
    out["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if out["cuda_available"] else []
    mps = getattr(torch.backends, "mps", None)
    out["mps_available"] = bool(mps is not None and mps.is_available())
except BaseException as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
try:
    import numpy
    out["numpy"] = numpy.__version__
except BaseException as exc:
    out["numpy_error"] = f"{type(exc).__name__}: {exc}"
try:
    import threadpoolctl
    out["threadpools"] = [{k: p.get(k) for k in ("user_api", "internal_api", "version", "num_threads")}
                          for p in threadpoolctl.threadpool_info()]
except BaseException as exc:
    out["threadpool_error"] = f"{type(exc).__name__}: {exc}"
out["warnings"] = caught
print("NNUNET_SUPERVISE_PROBE " + json.dumps(out, default=str))
"""
_PROBE_MARK = "NNUNET_SUPERVISE_PROBE "
Runner = Callable[..., "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True)
class Disk:
    """Free space under one nnU-Net folder (or the nearest existing folder above it)."""

    name: str  # nnUNet_raw, nnUNet_preprocessed, nnUNet_results
    path: str | None  # None: not set
    exists: bool = False
    measured_at: str | None = None  # the folder statvfs was asked about
    free_bytes: int | None = None
    total_bytes: int | None = None
    source: str = ""  # "the config", "the environment", "not set"


@dataclass(frozen=True)
class Facts:
    """Everything the checks look at; each field may be unknown (None, empty) where it could not be read."""

    python: str = ""
    executable: str = ""
    platform: str = ""
    versions: Mapping[str, str | None] = field(default_factory=dict)  # distribution -> version, None: not installed
    torch: Mapping[str, Any] = field(default_factory=dict)  # the probe's object; "error" where it failed
    driver: Mapping[str, Any] = field(default_factory=dict)  # driver_version, cuda_driver, gpus, source, error
    shm: tuple[int, int] | None = None  # (size, free) of /dev/shm in bytes
    allocation: Mapping[str, Any] = field(default_factory=dict)  # supervisor.evidence.allocation's document
    disks: tuple[Disk, ...] = ()
    compiler: str | None = None  # the C compiler torch.compile would find (CC, cc, gcc, clang), None: none
    predictor_weights_only_false: bool | None = None  # nnU-Net's predictor passes weights_only=False to torch.load
    environ: Mapping[str, str] = field(default_factory=dict)  # nnUNet_* and the few variables above that are set
    notes: tuple[str, ...] = ()  # what could not be read, in words

    def version(self, dist: str) -> tuple[int, ...] | None:
        return parse_version(self.versions.get(dist))


@dataclass(frozen=True)
class Known:
    """One known-bad combination: when it applies, its symptom, what to do, and where upstream reports it."""

    key: str
    applies: Callable[[Facts], bool]
    symptom: str
    advice: str
    reference: str  # owner/repo#number
    severity: str = "problem"  # "problem" (exit 1) or "caution" (printed, exit unchanged)

    @property
    def url(self) -> str:
        repo, _, number = self.reference.partition("#")
        return f"https://github.com/{repo}/issues/{number}"


def parse_version(text: str | None) -> tuple[int, ...] | None:
    """The release numbers of a version string: "2.9.0+cu128" -> (2, 9, 0), "3.0.0b4" -> (3, 0, 0); None: unknown."""
    if not text:
        return None
    m = re.match(r"\s*v?(\d+(?:\.\d+)*)", text)
    return tuple(int(p) for p in m.group(1).split(".")) if m else None


def _pad(v: tuple[int, ...], n: int = 3) -> tuple[int, ...]:
    return v + (0,) * (n - len(v))


def in_range(facts: Facts, dist: str, low: str | None = None, below: str | None = None) -> bool:
    """Is the installed `dist` at least `low` and below `below` (either may be left out)? False when not installed."""
    v = facts.version(dist)
    if v is None:
        return False
    lo, hi = parse_version(low), parse_version(below)
    n = max(len(v), len(lo or ()), len(hi or ()), 3)
    return (lo is None or _pad(v, n) >= _pad(lo, n)) and (hi is None or _pad(v, n) < _pad(hi, n))


_COMPILE_OFF = ("f", "false", "0", "no", "n", "off")
_SHM_DOCKER_DEFAULT = 64 << 20


def _shm_small(f: Facts) -> bool:
    return f.shm is not None and f.shm[0] <= _SHM_DOCKER_DEFAULT


def _uses_cuda(f: Facts) -> bool:
    return bool(f.torch.get("cuda_available")) or bool(f.driver.get("gpus"))


def _torch29_conv3d(f: Facts) -> bool:
    if not (in_range(f, "torch", "2.9", "2.10") and _uses_cuda(f)):
        return False
    cudnn = f.torch.get("cudnn")  # torch.backends.cudnn.version(): 91500 is 9.15.0
    return not in_range(f, "torch", "2.9.1") or not (isinstance(cudnn, int) and cudnn >= 91500)


def _no_compiler(f: Facts) -> bool:
    return (f.compiler is None and bool(f.torch.get("cuda_available"))
            and f.environ.get("nnUNet_compile", "t").strip().lower() not in _COMPILE_OFF)


def _numpy_abi(f: Facts) -> bool:
    texts = [str(w) for w in f.torch.get("warnings") or []] + [str(f.torch.get("error") or "")]
    return in_range(f, "numpy", "2") and any("compiled using NumPy 1.x" in t for t in texts)


# The known problems, each cited from the issue tracker that reports it, with the versions as stated there.
KNOWN: tuple[Known, ...] = (
    Known("shm_small", _shm_small,
          "/dev/shm is at most 64 MiB (docker's default --shm-size): the data-loading workers that hand batches to "
          "the trainer through shared memory die ('Bus error', 'unable to allocate shared memory'), and nnU-Net "
          "reports only 'One or more background workers are no longer alive'",
          "give the container more shared memory (docker run --shm-size 16g, or --ipc=host; Kubernetes: an emptyDir "
          "with medium: Memory on /dev/shm)",
          "MIC-DKFZ/nnUNet#1343"),
    Known("threadpoolctl_fails", lambda f: bool(f.torch.get("threadpool_error")),
          "threadpoolctl cannot read this environment's BLAS/OpenMP libraries; every augmentation worker enters "
          "`with threadpool_limits(1, None)` and dies with the same error (e.g. AttributeError: 'NoneType' object "
          "has no attribute 'split' in threadpoolctl's get_version), then 'One or more background workers are no "
          "longer alive'",
          "update threadpoolctl and the BLAS it trips over (pip install -U threadpoolctl numpy; in conda, one BLAS "
          "for everything: openblas or mkl, not both)",
          "MIC-DKFZ/nnUNet#1437"),
    Known("numpy2_abi", _numpy_abi,
          "numpy >= 2 with a compiled module built against NumPy 1.x: 'A module that was compiled using NumPy 1.x "
          "cannot be run in NumPy 2.0.0 as it may crash'",
          "pip install 'numpy<2', or upgrade the module the warning names (often torch itself) to a build for "
          "numpy 2",
          "MIC-DKFZ/nnUNet#2299"),
    Known("torch26_weights_only",
          lambda f: in_range(f, "torch", "2.6") and f.predictor_weights_only_false is False,
          "torch >= 2.6 loads with weights_only=True by default and this nnU-Net's predictor does not pass "
          "weights_only=False: prediction fails with '_pickle.UnpicklingError: Weights only load failed ... "
          "Unsupported global: GLOBAL numpy.core.multiarray.scalar'",
          "upgrade nnunetv2 (the fix is MIC-DKFZ/nnUNet PR #2683; this supervisor wants 2.8.x), or pin torch<2.6",
          "MIC-DKFZ/nnUNet#2681"),
    Known("torch29_conv3d", _torch29_conv3d,
          "PyTorch 2.9 with CUDA: 2.9.0 runs 3D convolutions without cuDNN, and 2.9.1 uses cuDNN for them again only "
          "with cuDNN >= 9.15 (pytorch/pytorch#166122, #166790): 3d_fullres/3d_lowres epochs many times slower, or "
          "out of GPU memory where 2.8 fit; nnU-Net's installation instructions name PyTorch 2.8",
          "pip install 'torch==2.8.*', or a torch after 2.9 (or 2.9.1 with nvidia-cudnn >= 9.15)",
          "MIC-DKFZ/nnUNet#3002"),
    Known("nnunet264_preprocessing", lambda f: in_range(f, "nnunetv2", "2.6.4", "2.6.5"),
          "nnunetv2 2.6.4: nnUNetv2_plan_and_preprocess fails with 'RuntimeError: Error while creating the NDArray' "
          "(blosc2, in save_case); the reporter's fix was another nnunetv2 version",
          "install nnunetv2 2.8.x, which this supervisor is made for",
          "MIC-DKFZ/nnUNet#3003"),
    Known("no_c_compiler", _no_compiler,
          "nnU-Net compiles the network on CUDA (torch.compile, inductor) and no C compiler is found: the first "
          "training iteration fails with 'RuntimeError: Failed to find C compiler. Please specify via CC "
          "environment variable.'",
          "install a C compiler (apt-get install build-essential) or set CC, or nnUNet_compile=f (the supervisor's "
          "compile remedy does that after the first failure)",
          "MIC-DKFZ/nnUNet#2268"),
    Known("batchgenerators_threadpool", lambda f: in_range(f, "batchgenerators", None, "0.25.2"),
          "batchgenerators <= 0.25.1 (reported with nnU-Net 2.5.2) nests `with threadpool_limits` in "
          "NonDetMultiThreadedAugmenter, which is not thread safe (joblib/threadpoolctl#176): background workers "
          "die now and then on some cluster nodes; fixes proposed in batchgenerators PR #136 and nnUNet PR #2910",
          "pip install -U batchgenerators; if workers still die at random, nnUNet_n_proc_DA=0 rules it out",
          "MIC-DKFZ/batchgenerators#138", severity="caution"),
)


# ---- gathering (each part takes what it reads as arguments, for the tests) ----

def distribution_versions(names: tuple[str, ...] = DISTRIBUTIONS,
                          lookup: Callable[[str], str] = importlib.metadata.version) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = lookup(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
        except Exception:  # a damaged dist-info: not known
            out[name] = None
    return out


def torch_probe(python: str = sys.executable, run: Runner = subprocess.run,
                timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Import torch in a short subprocess (the daemon never does) and read what it prints."""
    try:
        done = run([python, "-c", PROBE], capture_output=True, text=True, timeout=timeout_s,
                   stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": f"importing torch took longer than {timeout_s:g} s"}
    except OSError as exc:
        return {"error": f"could not start {python}: {exc}"}
    for line in (done.stdout or "").splitlines():
        if line.startswith(_PROBE_MARK):
            try:
                found = json.loads(line[len(_PROBE_MARK):])
            except ValueError:
                break
            if isinstance(found, dict):
                stderr = (done.stderr or "").strip()
                if "compiled using NumPy 1.x" in stderr:  # numpy prints this itself, not as a warning
                    found.setdefault("warnings", []).append(stderr[-2000:])
                return found
    tail = ((done.stderr or "") + (done.stdout or "")).strip().splitlines()[-3:]
    return {"error": f"the probe exited {done.returncode}: " + " | ".join(tail)}


def driver_info(run: Runner = subprocess.run, which: Callable[[str], str | None] = shutil.which,
                nvml: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
    """The NVIDIA driver: nvidia-smi when it is there, else NVML (pynvml) directly."""
    smi = which("nvidia-smi")
    errors: list[str] = []
    if smi is not None:
        try:
            done = run([smi, "--query-gpu=driver_version,name,memory.total", "--format=csv,noheader"],
                       capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
            rows = [[c.strip() for c in line.split(",")] for line in done.stdout.splitlines() if line.strip()]
            if done.returncode == 0 and rows:
                return {"source": "nvidia-smi", "driver_version": rows[0][0],
                        "gpus": [", ".join(r[1:]) for r in rows]}
            errors.append(f"nvidia-smi exited {done.returncode}: {(done.stderr or done.stdout).strip()[:300]}")
        except (OSError, subprocess.SubprocessError) as exc:
            errors.append(f"nvidia-smi: {exc}")
    try:
        found = (nvml or _nvml_driver)()
    except Exception as exc:  # pynvml raises its own NVMLError kinds; none of them may stop the report
        errors.append(f"NVML: {exc}")
        return {"source": None, "error": "; ".join(errors) or "no NVIDIA driver found"}
    return {**found, **({"notes": errors} if errors else {})}


def _nvml_driver() -> dict[str, Any]:
    import importlib

    nv: Any = importlib.import_module("pynvml")

    def text(v: object) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    nv.nvmlInit()
    try:
        gpus = [text(nv.nvmlDeviceGetName(nv.nvmlDeviceGetHandleByIndex(i))) for i in range(nv.nvmlDeviceGetCount())]
        cuda = int(nv.nvmlSystemGetCudaDriverVersion())
        return {"source": "NVML", "driver_version": text(nv.nvmlSystemGetDriverVersion()),
                "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}", "gpus": gpus}
    finally:
        nv.nvmlShutdown()


def find_compiler(environ: Mapping[str, str], which: Callable[[str], str | None] = shutil.which) -> str | None:
    for name in ([environ["CC"]] if environ.get("CC") else []) + ["cc", "gcc", "clang"]:
        path = which(name)
        if path is not None:
            return path
    return None


def predictor_passes_weights_only(locate: Callable[[str], Path | None] | None = None) -> bool | None:
    """Does the installed nnU-Net's predictor load checkpoints with weights_only=False (read, not imported)?"""
    rel = "nnunetv2/inference/predict_from_raw_data.py"
    try:
        path = locate(rel) if locate is not None else Path(str(
            importlib.metadata.distribution("nnunetv2").locate_file(rel)))
        if path is None:
            return None
        with open(path, "rb") as f:
            text = f.read(1 << 20).decode("utf-8", "replace")
    except (OSError, importlib.metadata.PackageNotFoundError, ValueError):
        return None
    calls = re.findall(r"torch\.load\((?:[^()]|\([^()]*\))*\)", text, flags=re.S)
    return None if not calls else all("weights_only=False" in c for c in calls)


def nnunet_folders(config: Path | None, environ: Mapping[str, str],
                   notes: list[str]) -> list[tuple[str, Path | None, str]]:
    """(name, path, where it came from) of nnUNet_raw/_preprocessed/_results: the config's paths section (relative
    to its folder) over the environment, as the supervisor resolves them."""
    given: dict[str, str | None] = {}
    base = Path.cwd()
    if config is not None:
        from supervisor.config import read_document

        try:
            doc = read_document(config)
            paths = doc.get("paths") if isinstance(doc, dict) else None
            given = {k: v for k, v in (paths or {}).items() if isinstance(v, str) and v} if isinstance(
                paths, dict) else {}
            base = config.resolve().parent
        except (SupervisorError, OSError) as exc:
            notes.append(f"config {config}: could not be read ({exc}); nnU-Net folders from the environment")
    out: list[tuple[str, Path | None, str]] = []
    for name in PATH_ENV_VARS:
        if given.get(name):
            out.append((name, (base / str(given[name])).resolve(), "the config"))
        elif environ.get(name):
            out.append((name, (base / environ[name]).resolve(), "the environment"))
        else:
            out.append((name, None, "not set"))
    return out


def disk_usage(folders: list[tuple[str, Path | None, str]],
               usage: Callable[[str], Any] = shutil.disk_usage) -> tuple[Disk, ...]:
    out: list[Disk] = []
    for name, path, source in folders:
        if path is None:
            out.append(Disk(name, None, source=source))
            continue
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            u = usage(str(probe))
            out.append(Disk(name, str(path), path.exists(), str(probe), int(u.free), int(u.total), source))
        except OSError:
            out.append(Disk(name, str(path), path.exists(), str(probe), source=source))
    return tuple(out)


def gather(config: Path | None = None, environ: Mapping[str, str] | None = None,
           probe: Callable[[], dict[str, Any]] | None = None) -> Facts:
    """This machine's facts (the real sources; `probe` replaces the torch subprocess)."""
    env = os.environ if environ is None else environ
    notes: list[str] = []
    folders = nnunet_folders(config, env, notes)
    allocation: dict[str, Any] = {}
    try:
        allocation = read_allocation(env).document()
    except Exception as exc:  # every source there is optional; nothing of it may stop the report
        notes.append(f"allocation: {exc}")
    torch_facts = (probe or torch_probe)()
    return Facts(
        python=sys.version.split()[0], executable=sys.executable,
        platform=f"{platform.system()} {platform.release()} {platform.machine()}",
        versions=distribution_versions(), torch=torch_facts, driver=driver_info(), shm=shm_space(),
        allocation=allocation, disks=disk_usage(folders), compiler=find_compiler(env),
        predictor_weights_only_false=predictor_passes_weights_only(),
        environ={k: v for k, v in env.items() if k.startswith("nnUNet_") or k in _ENV_NAMES},
        notes=tuple(notes))


# ---- judging and printing ----

def findings(facts: Facts, known: tuple[Known, ...] = KNOWN) -> list[Known]:
    """The known problems that apply here; a check that cannot decide (it raised) is left out."""
    out = []
    for k in known:
        try:
            if k.applies(facts):
                out.append(k)
        except Exception:  # a check over facts that could not be read: not found
            continue
    return out


def exit_code(found: list[Known]) -> int:
    """0 fine (cautions only), 1 a known problem found."""
    return 1 if any(k.severity == "problem" for k in found) else 0


def report(facts: Facts, known: tuple[Known, ...] = KNOWN) -> dict[str, Any]:
    """The JSON report: the facts, what was found, and the exit code."""
    found = findings(facts, known)
    doc = asdict(facts)
    doc["disks"] = [asdict(d) for d in facts.disks]
    doc["shm"] = None if facts.shm is None else {"path": SHM, "size_bytes": facts.shm[0], "free_bytes": facts.shm[1]}
    doc["found"] = [{"key": k.key, "severity": k.severity, "symptom": k.symptom, "advice": k.advice,
                     "reference": k.reference, "url": k.url} for k in found]
    doc["ok"] = exit_code(found) == 0
    doc["exit_code"] = exit_code(found)
    return doc


def _size(n: object) -> str:
    if not isinstance(n, (int, float)):
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return "?"


def _row(label: str) -> str:
    return f"{label:<30} "


def text(doc: Mapping[str, Any]) -> str:
    """The report as a person reads it (and pastes into an issue)."""
    lines = [_row("python") + f"{doc.get('python')} ({doc.get('executable')}) on {doc.get('platform')}"]
    t = doc.get("torch") or {}
    if t.get("version"):
        cuda = f"CUDA {t.get('cuda')}" if t.get("cuda") else ("ROCm " + str(t["hip"]) if t.get("hip") else "no CUDA")
        avail = (f"GPUs: {', '.join(t.get('devices') or []) or 'none visible'}" if t.get("cuda_available")
                 else "CUDA not available" + (", MPS available" if t.get("mps_available") else ""))
        lines.append(_row("torch") + f"{t['version']}, {cuda}, cuDNN {t.get('cudnn')}; {avail}")
    if t.get("error"):
        lines.append(_row("torch") + f"could not be imported: {t['error']}")
    d = doc.get("driver") or {}
    if d.get("driver_version"):
        extra = f", CUDA driver {d['cuda_driver']}" if d.get("cuda_driver") else ""
        lines.append(_row("NVIDIA driver") + f"{d['driver_version']}{extra} ({d.get('source')}): "
                     f"{'; '.join(d.get('gpus') or []) or 'no GPU'}")
    else:
        lines.append(_row("NVIDIA driver") + f"none ({d.get('error') or 'not found'})")
    for name, version in (doc.get("versions") or {}).items():
        lines.append(_row(name) + f"{version or 'not installed'}")
    if t.get("threadpools"):
        pools = ", ".join(f"{p.get('internal_api')} {p.get('version')} ({p.get('num_threads')} threads)"
                          for p in t["threadpools"])
        lines.append(_row("threadpools") + f"{pools}")
    shm = doc.get("shm")
    lines.append(_row("/dev/shm") + (f"{_size(shm['size_bytes'])}, {_size(shm['free_bytes'])} free" if shm
                                      else "not there"))
    a = doc.get("allocation") or {}
    if a:
        cpus = a.get("cpus")
        lines.append(_row("CPUs") + (f"{cpus:g} of the host's {a.get('host_cpus')} ({a.get('cpu_source')})"
                                     if isinstance(cpus, (int, float)) else str(a.get("cpu_source"))))
        lines.append(_row("memory") + f"{_size(a.get('memory_bytes'))} ({a.get('memory_source')}; the machine has "
                     f"{_size(a.get('memory_total'))})")
    for disk in doc.get("disks") or []:
        if disk.get("path") is None:
            lines.append(_row(disk["name"]) + "not set")
            continue
        where = "" if disk.get("exists") else f" (missing; measured at {disk.get('measured_at')})"
        lines.append(_row(disk["name"]) + f"{disk['path']}: {_size(disk.get('free_bytes'))} free of "
                     f"{_size(disk.get('total_bytes'))}{where} (from {disk.get('source')})")
    lines.append(_row("C compiler") + f"{doc.get('compiler') or 'none found'}")
    env = doc.get("environ") or {}
    if env:
        lines.append(_row("environment") + " ".join(f"{k}={v}" for k, v in sorted(env.items())))
    for note in doc.get("notes") or []:
        lines.append(_row("note") + f"{note}")
    found = doc.get("found") or []
    lines.append("")
    if not found:
        lines.append("no known problem found")
    for k in found:
        lines.append(f"{k['severity'].upper()}  {k['key']}: {k['symptom']}")
        lines.append(f"    fix: {k['advice']}")
        lines.append(f"    see: {k['reference']} ({k['url']})")
    return "\n".join(lines)
