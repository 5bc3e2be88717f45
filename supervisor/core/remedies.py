"""The remedy ladder: after a failure with a known cause, change one thing for the next attempt, as a careful engineer
at the machine would, and say so.

    host_oom, workers_died, shm_exhausted -> nnUNet_n_proc_DA halved (from what nnU-Net would use here) to a floor;
                                             in the final validation, nnUNet_def_n_proc (its export pool) halved;
                                             in preprocessing, its -np (NNUNET_SUPERVISE_PREPROCESS_NP) halved;
                                             in prediction, nnUNet_npp halved to 1, then nnUNet_nps
    weights_only_load                     -> TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1, only where our own safe load of the
                                             very checkpoint the trainer refused had passed
    compile_error                         -> nnUNet_compile=f
    cuda_oom                              -> PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (after the old tree's
                                             GPU memory is released, as before every relaunch), then, only where
                                             the user opted in and the cooperative shim runs, the batch size halved

One change per relaunch. A change stays for the rest of the run (state.json carries it across supervisor restarts and
SLURM requeues). A cause that comes back without progress once its ladder is spent ends the run with the whole story
instead of more of the same. A variable the user set (nnunet.env, or the supervisor's own environment) is only
changed where remedies.override_user allows it; otherwise the message says what the user could set. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Union

from supervisor.core.causes import COMPILE_ERROR, CUDA_OOM, HOST_OOM, SHM_EXHAUSTED, WEIGHTS_ONLY, WORKERS_DIED
from supervisor.trainer.protocol import BATCH_SIZE_VAR

WORKERS_VAR = "nnUNet_n_proc_DA"
EXPORT_VAR = "nnUNet_def_n_proc"  # nnU-Net's default process count: the final validation's export pool (8)
# the supervised preprocessing's -np (our shim, supervisor.trainer.preprocess, reads it): its pool of workers
PREPROCESS_VAR = "NNUNET_SUPERVISE_PREPROCESS_NP"
NNUNET_DEFAULT_PREPROCESS = 4  # nnUNetv2_plan_and_preprocess's -np for 3d_fullres, 2.8 (8 for 2d and 3d_lowres)
# where a preprocessing fails: its pool is what holds memory in each
PREPROCESS_PHASES = ("fingerprint", "planning", "preprocessing")
# nnUNetv2_predict's -npp (processes reading and preprocessing the cases) and -nps (exporting the segmentations),
# read from these variables when the options are not given; 3 each in 2.8
NPP_VAR, NPS_VAR = "nnUNet_npp", "nnUNet_nps"
NNUNET_DEFAULT_NPP = NNUNET_DEFAULT_NPS = 3
PREDICT_PHASES = ("prediction",)
# nnUNetv2_ensemble's and nnUNetv2_apply_postprocessing's -np (the combining stage passes it): their one pool
COMBINE_VAR = "NNUNET_SUPERVISE_COMBINE_NP"
COMBINE_PHASES = ("combining",)
NNUNET_DEFAULT_EXPORT = 8  # nnunetv2/configuration.py, 2.8
WEIGHTS_VAR = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
COMPILE_VAR = "nnUNet_compile"
ALLOC_VAR = "PYTORCH_CUDA_ALLOC_CONF"
EXPANDABLE = "expandable_segments:True"

WORKER_CAUSES = (HOST_OOM, WORKERS_DIED, SHM_EXHAUSTED)

SHM_FIX = ("give the trainer a larger /dev/shm: `docker run --shm-size=8g`, in Kubernetes an emptyDir "
           "{medium: Memory, sizeLimit: 8Gi} mounted at /dev/shm (`nnunet-supervise kubernetes` does: kubernetes."
           "shm_size), or `mount -o remount,size=8G /dev/shm` on the host")
ADVICE = {
    HOST_OOM: "the training needs more memory than it is given: raise the limit (SLURM --mem, the container's or the "
              "cgroup's memory limit), close what else uses the machine's memory, or train fewer folds at once",
    WORKERS_DIED: "run the trainer once by hand to see why its workers die",
    SHM_EXHAUSTED: SHM_FIX,
    COMPILE_ERROR: "the failure is not in torch.compile alone; read the attempt log's traceback",
    WEIGHTS_ONLY: "the trainer still refuses the checkpoint: fix its load_checkpoint to call torch.load(..., "
                  "weights_only=False), as nnU-Net's nnUNetTrainer.load_checkpoint does",
    CUDA_OOM: "the network does not fit this GPU: a GPU with more memory, fewer folds per GPU "
              "(experiment.devices.per_gpu), or plans with a smaller batch or patch (nnUNetv2_plan_experiment "
              "-gpu_memory_target)",
}


REMEDY_VARS = (WORKERS_VAR, EXPORT_VAR, COMPILE_VAR, ALLOC_VAR, BATCH_SIZE_VAR, WEIGHTS_VAR, PREPROCESS_VAR, NPP_VAR,
               NPS_VAR, COMBINE_VAR)


def nnunet_default_workers(hostname: str, cpu_count: int) -> int:
    """nnU-Net's own worker count without nnUNet_n_proc_DA (nnunetv2/utilities/default_n_proc_DA.py, 2.8: a table of
    the DKFZ's hosts, 12 elsewhere, never more than the CPU count). Copied rather than imported: the daemon does not
    load nnU-Net (nor torch with it)."""
    table = (("Fabian", 12), ("isensee-", 12))
    prefixes = (("e230-dgx1", 10), ("hdf18-gpu", 16), ("e132-comp", 16), ("e230-dgx2", 6), ("e230-dgxa100-", 28),
                ("e230-thinka100-", 20), ("lsf22-gpu", 28), ("hdf19-gpu", 12), ("e071-gpu", 12))
    exact = {"hdf19-gpu16": 16, "hdf19-gpu17": 16, "hdf19-gpu18": 16, "hdf19-gpu19": 16, "e230-AMDworkstation": 16}
    use = dict(table).get(hostname) or exact.get(hostname)
    if use is None:
        use = next((n for prefix, n in prefixes if hostname.startswith(prefix)), None)
    if use is None:
        lower = hostname.lower()
        use = 48 if "superh200" in lower else 28 if "superl40s" in lower else 12
    return min(use, cpu_count)


def user_settings(config_env: Mapping[str, str], environ: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The remedy variables the user set, and where: nnunet.env wins over the supervisor's environment (as in the
    trainer's environment)."""
    values, sources = {}, {}
    for var in REMEDY_VARS:
        if var in config_env:
            values[var], sources[var] = config_env[var], "nnunet.env"
        elif var in environ:
            values[var], sources[var] = environ[var], "the supervisor's environment"
    return values, sources


@dataclass(frozen=True)
class RemedyOptions:
    """The config's `remedies` section, as the ladder needs it."""

    enabled: bool = True
    workers: bool = True
    min_workers: int = 0
    compile: bool = True
    cuda_alloc: bool = True
    batch_size: bool = False  # opt-in: a smaller batch changes the training
    min_batch_size: int = 2
    override_user: bool = False
    weights_only: bool = True  # TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 for a trainer whose torch.load refuses our
    # verified checkpoint


@dataclass(frozen=True)
class Setting:
    """Facts about this run the ladder starts from."""

    default_workers: int  # what nnU-Net uses here without nnUNet_n_proc_DA (its table, capped at the CPU count)
    user_env: Mapping[str, str]  # variables the user set: name -> value
    user_source: Mapping[str, str]  # name -> where it was set ("nnunet.env", "the supervisor's environment")
    cooperative: bool = False
    batch_size: Union[int, None] = None  # the plans' batch size of this configuration
    default_export: int = NNUNET_DEFAULT_EXPORT  # the final validation's export processes without a remedy
    default_preprocess: int = NNUNET_DEFAULT_PREPROCESS  # the preprocessing's processes without a remedy
    default_combine: int = 1  # ensembling's or postprocessing's processes without a remedy


@dataclass(frozen=True)
class Applied:
    """One change: for which cause, from which attempt on, from -> to."""

    cause: str
    variable: str
    old: Union[str, None]  # None: unset (nnU-Net's default applied)
    new: str
    attempt: int  # the first attempt that runs with it
    epoch: int  # the epoch reached when it was made (did the next attempts get further?)

    def document(self) -> dict[str, Any]:
        return {"cause": self.cause, "variable": self.variable, "from": self.old, "to": self.new,
                "attempt": self.attempt, "epoch": self.epoch}


@dataclass(frozen=True)
class Remedies:
    """The changes in effect (variable -> value) and how they came about, oldest first."""

    env: tuple[tuple[str, str], ...] = ()
    history: tuple[Applied, ...] = ()

    def value(self, variable: str) -> str | None:
        return dict(self.env).get(variable)

    def with_change(self, change: Applied) -> Remedies:
        env = {**dict(self.env), change.variable: change.new}
        return replace(self, env=tuple(sorted(env.items())), history=(*self.history, change))

    def document(self) -> dict[str, Any]:
        """For state.json."""
        return {"env": dict(self.env), "history": [a.document() for a in self.history]}

    @classmethod
    def from_document(cls, doc: object) -> Remedies:
        """From state.json; what is not as written above is left out (a damaged file loses remedies, not the run)."""
        if not isinstance(doc, dict):
            return cls()
        env = doc.get("env")
        pairs = sorted((k, v) for k, v in env.items() if isinstance(k, str) and isinstance(v, str)) \
            if isinstance(env, dict) else []
        history = []
        items = doc.get("history")
        for h in items if isinstance(items, list) else []:
            if not isinstance(h, dict):
                continue
            cause, var, new, old = h.get("cause"), h.get("variable"), h.get("to"), h.get("from")
            attempt, epoch = h.get("attempt"), h.get("epoch")
            if (isinstance(cause, str) and isinstance(var, str) and isinstance(new, str)
                    and (old is None or isinstance(old, str)) and isinstance(attempt, int)
                    and isinstance(epoch, int)):
                history.append(Applied(cause, var, old, new, attempt, epoch))
        return cls(tuple(pairs), tuple(history))

    def story(self) -> str:
        return "; ".join(f"attempt {a.attempt}: {a.variable} {a.old if a.old is not None else '(unset)'} -> {a.new} "
                         f"(after {a.cause})" for a in self.history) or "none"


@dataclass(frozen=True)
class Change:
    applied: Applied
    message: str


@dataclass(frozen=True)
class Keep:
    """No change: relaunch as it is (the message says why)."""

    message: str


@dataclass(frozen=True)
class Exhausted:
    """The cause came back without progress and nothing is left to change: give up with the story."""

    message: str


Outcome = Union[Change, Keep, Exhausted]


def _as_int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


class Ladder:
    """Chooses the next remedy for a cause."""

    def __init__(self, options: RemedyOptions, setting: Setting) -> None:
        self.options, self.setting = options, setting

    def next(self, cause: str, remedies: Remedies, attempt: int, epoch: int, progressed: bool,
             phase: str = "training") -> Outcome:
        """`attempt`: the one about to start; `progressed`: the failed attempt got further than any before it;
        `phase`: where it failed (in the final validation the augmentation workers are gone: nnU-Net's export pool
        is what holds memory there)."""
        o = self.options
        if not o.enabled:
            return Keep("remedies are off (remedies.enabled: false)")
        if cause in WORKER_CAUSES and phase in PREDICT_PHASES:
            step = self._predictor(cause, remedies, attempt, epoch) if o.workers else \
                Keep("fewer processes is off (remedies.workers: false)")
        elif cause in WORKER_CAUSES and phase in COMBINE_PHASES:
            step = self._halve(cause, COMBINE_VAR, self.setting.default_combine, 1, remedies, attempt, epoch,
                               "process(es) ensembling or postprocessing the cases") if o.workers else \
                Keep("fewer processes is off (remedies.workers: false)")
        elif cause in WORKER_CAUSES and phase in PREPROCESS_PHASES:
            step = self._halve(cause, PREPROCESS_VAR, self.setting.default_preprocess, 1, remedies, attempt, epoch,
                               "preprocessing process(es)") if o.workers else \
                Keep("fewer processes is off (remedies.workers: false)")
        elif cause in WORKER_CAUSES and phase == "validation":
            step = self._halve(cause, EXPORT_VAR, self.setting.default_export, 1, remedies, attempt, epoch,
                               "export process(es) in the final validation") if o.workers else \
                Keep("fewer processes is off (remedies.workers: false)")
        elif cause in WORKER_CAUSES:
            step = self._halve(cause, WORKERS_VAR, self.setting.default_workers, o.min_workers, remedies, attempt,
                               epoch, "augmentation worker(s)") if o.workers else \
                Keep("fewer augmentation workers is off (remedies.workers: false)")
        elif cause == WEIGHTS_ONLY:
            step = self._set(cause, WEIGHTS_VAR, "1", remedies, attempt, epoch, "remedies.weights_only") \
                if o.weights_only else Keep("the weights-only remedy is off (remedies.weights_only: false)")
        elif cause == COMPILE_ERROR:
            step = self._set(cause, COMPILE_VAR, "f", remedies, attempt, epoch, "remedies.compile") if o.compile else \
                Keep("turning torch.compile off is off (remedies.compile: false)")
        elif cause == CUDA_OOM:
            step = self._cuda(remedies, attempt, epoch)
        else:
            return Keep(f"no remedy for {cause}")
        if isinstance(step, Keep) and not progressed and self._tried(cause, remedies):
            return Exhausted(f"{cause} again without progress after every remedy for it (remedies so far: "
                             f"{remedies.story()}); {step.message}. {ADVICE.get(cause, '')}".strip())
        return step

    def _predictor(self, cause: str, remedies: Remedies, attempt: int, epoch: int) -> Outcome:
        """nnUNetv2_predict's reading pool first (it holds whole cases), then its export pool, each down to 1."""
        npp = _as_int(remedies.value(NPP_VAR) or self._user(NPP_VAR, remedies)) or NNUNET_DEFAULT_NPP
        if npp > 1:
            return self._halve(cause, NPP_VAR, NNUNET_DEFAULT_NPP, 1, remedies, attempt, epoch,
                               "process(es) reading and preprocessing the cases")
        return self._halve(cause, NPS_VAR, NNUNET_DEFAULT_NPS, 1, remedies, attempt, epoch,
                           "process(es) exporting the segmentations")

    def _tried(self, cause: str, remedies: Remedies) -> bool:
        family = WORKER_CAUSES if cause in WORKER_CAUSES else (cause,)
        return any(a.cause in family for a in remedies.history)

    def _user(self, variable: str, remedies: Remedies) -> str | None:
        """The user's own value of a variable that no remedy has changed yet (None: not the user's)."""
        if remedies.value(variable) is not None:
            return None
        return self.setting.user_env.get(variable)

    def _refuse_user(self, variable: str, value: str, wanted: str) -> Keep:
        where = self.setting.user_source.get(variable, "your environment")
        return Keep(f"{variable}={value} is your setting ({where}); the supervisor leaves it (would set {wanted}; "
                    "remedies.override_user: true allows it)")

    def _halve(self, cause: str, variable: str, default: int, floor: int, remedies: Remedies, attempt: int,
               epoch: int, what: str) -> Outcome:
        """Half the processes of one of nnU-Net's pools, from what it uses now (a remedy's value, the user's, or the
        count it would use here by itself), never below `floor`."""
        user = self._user(variable, remedies)
        now = remedies.value(variable) or user
        current = _as_int(now)
        if current is None:
            current = default
        if current <= floor:
            key = "remedies.min_workers" if variable == WORKERS_VAR else "nnU-Net's pool needs one"
            return Keep(f"{variable} is {current} already ({key}: {floor})")
        new = max(floor, current // 2)
        if user is not None and not self.options.override_user:
            return self._refuse_user(variable, user, str(new))
        how = ("0: augmentation in the main process, no workers and no shared memory (slow)" if new == 0
               else f"{new} {what} instead of {current}")
        why = {HOST_OOM: "fewer processes holding data in memory",
               SHM_EXHAUSTED: "fewer batches in shared memory at once; the lasting fix: " + SHM_FIX,
               WORKERS_DIED: "fewer processes to die"}[cause]
        applied = Applied(cause, variable, now, str(new), attempt, epoch)
        return Change(applied, f"{variable}={how} ({why})")

    def _set(self, cause: str, variable: str, value: str, remedies: Remedies, attempt: int, epoch: int,
             key: str) -> Outcome:
        if remedies.value(variable) == value:
            return Keep(f"{variable}={value} already ({key})")
        user = self._user(variable, remedies)
        if user is not None and user.lower() == value:
            return Keep(f"{variable}={user} already (your setting)")
        if user is not None and not self.options.override_user:
            return self._refuse_user(variable, user, value)
        return Change(Applied(cause, variable, remedies.value(variable) or user, value, attempt, epoch),
                      f"{variable}={value}")

    def _cuda(self, remedies: Remedies, attempt: int, epoch: int) -> Outcome:
        o, s = self.options, self.setting
        notes = []
        if o.cuda_alloc:
            current = remedies.value(ALLOC_VAR) or self._user(ALLOC_VAR, remedies)
            if current is None or EXPANDABLE not in current.replace(" ", ""):
                user = self._user(ALLOC_VAR, remedies)
                if user is None or o.override_user:
                    new = f"{user},{EXPANDABLE}" if user else EXPANDABLE  # the user's other settings stay
                    return Change(Applied(CUDA_OOM, ALLOC_VAR, current, new, attempt, epoch),
                                  f"{ALLOC_VAR}={new} (less fragmentation; the old tree's GPU memory is released "
                                  "before the launch)")
                notes.append(self._refuse_user(ALLOC_VAR, user, f"{user},{EXPANDABLE}").message)
        else:
            notes.append("expandable segments are off (remedies.cuda_alloc: false)")
        if not o.batch_size:
            notes.append("a smaller batch is opt-in (remedies.batch_size: true, with cooperative.enabled)")
        elif not s.cooperative:
            notes.append("a smaller batch needs the cooperative shim (cooperative.enabled: true)")
        elif s.batch_size is None:
            notes.append("the plans' batch size is unknown")
        else:
            batch = _as_int(remedies.value(BATCH_SIZE_VAR)) or s.batch_size
            if batch > o.min_batch_size:
                smaller = max(o.min_batch_size, batch // 2)
                return Change(Applied(CUDA_OOM, BATCH_SIZE_VAR, str(batch), str(smaller), attempt, epoch),
                              f"batch size {smaller} instead of {batch} (you opted in: remedies.batch_size; the "
                              "results folder stays, the checkpoints resume)")
            notes.append(f"the batch size is {batch} already (remedies.min_batch_size: {o.min_batch_size})")
        return Keep("; ".join(notes))
