"""Tune's own saved state, checked before `study resume` hands it back to Tune.

Tune keeps an experiment's state as pickles (tuner.pkl, the searcher's state and its generator's
(search_gen_state-*.json, a pickle despite its name), objects inside experiment_state-*.json) and
unpickles them on restore. A study's own searcher and scheduler (study/tune/adapters.py) pickle
nothing but their stage's name: their state is the study's ledger, JSON. A pickle can name
any function to call, so a study folder on shared disk or in a bucket could run code on the
machine of whoever resumes it. Before a restore, every pickle Tune would load is read here with
an unpickler that builds nothing: each global it names must be one of ALLOWED (the classes Tune,
Optuna and segstudy put there; exact names, never whole modules, since a module such as `ray`
also holds functions that start processes). Anything else is refused in one line.

A trial's `error.pkl` (Tune's pickled exception, which cloudpickle may fill with code) is never
checked but removed before a restore: Tune then reads the same error from `error.txt`, which is
also where the study's record takes it from. A few functions Tune stores as data (REFERENCED) may be
named but not called.

ALLOWED is what the project's own resumed studies hold (grid and Optuna + ASHA, local and S3);
the end-to-end resume tests fail loudly when a Ray, Optuna or pyarrow upgrade adds a name.
"""

from __future__ import annotations

import io
import json
import pickle
import re

from study.errors import StudyError

ALLOWED = frozenset({
    "collections.deque", "collections.OrderedDict", "uuid.UUID", "datetime.datetime", "datetime.timedelta",
    "pyarrow._fs.FileSystem._from_uri", "pyarrow._fs.LocalFileSystem._reconstruct",
    "pyarrow._s3fs.S3FileSystem._reconstruct",
    "numpy._core.multiarray._reconstruct", "numpy._core.numeric._frombuffer", "numpy.dtype", "numpy.ndarray",
    "numpy.random._mt19937.MT19937", "numpy.random._pickle.__bit_generator_ctor",
    "numpy.random._pickle.__randomstate_ctor", "numpy.random._pickle.__generator_ctor",
    "ray.air._internal.usage.AirEntrypoint", "ray.train.SyncConfig",
    "ray.train._internal.checkpoint_manager._CheckpointManager", "ray.train._internal.session._TrainingResult",
    "ray.train._internal.storage.StorageContext", "ray.train._internal.storage._FilesystemSyncer",
    "ray.tune.Checkpoint", "ray.tune.CheckpointConfig", "ray.tune.FailureConfig", "ray.tune.RunConfig",
    "ray.tune.execution.placement_groups.PlacementGroupFactory", "ray.tune.experiment.experiment.Experiment",
    "ray.tune.logger.json.JsonLoggerCallback",
    "ray.tune.schedulers.async_hyperband.AsyncHyperBandScheduler", "ray.tune.schedulers.async_hyperband._Bracket",
    "ray.tune.schedulers.trial_scheduler.FIFOScheduler", "ray.tune.stopper.noop.NoopStopper",
    "ray.tune.tune_config.TuneConfig",
    "optuna.distributions.CategoricalDistribution", "optuna.distributions.FloatDistribution",
    "optuna.pruners._nop.NopPruner", "optuna.samplers._lazy_random_state.LazyRandomState",
    "optuna.samplers._random.RandomSampler", "optuna.samplers._tpe.parzen_estimator._ParzenEstimator",
    "optuna.samplers._tpe.parzen_estimator._ParzenEstimatorParameters", "optuna.samplers._tpe.sampler.TPESampler",
    "optuna.samplers._tpe.sampler.default_weights", "optuna.search_space.intersection.IntersectionSearchSpace",
    "optuna.storages._cached_storage._CachedStorage", "optuna.storages._cached_storage._StudyInfo",
    "optuna.storages._rdb.storage.RDBStorage", "optuna.storages._in_memory.InMemoryStorage",
    "optuna.storages._in_memory._StudyInfo", "optuna.study._study_direction.StudyDirection",
    "optuna.study.study.Study", "optuna.trial._frozen.FrozenTrial", "optuna.trial._state.TrialState",
    "optuna.trial._trial.Trial",
    "study.tune.callback.StudyProgress", "study.tune.searcher.StudyOptunaSearch", "study.tune.searcher.VariantSpace",
    "study.tune.adapters.StudySearcher", "study.tune.adapters.StudyScheduler",
    "study.tune.stage._trial_dirname",
    "study.tune.tracking.StudyMLflowLogger", "study.tune.tracking.StudyWandbLogger",
    "study.tune.tracking.StudyTensorBoardLogger", "study.tune.tracking.TrialFacts", "trainables.trial.StudyContext",
})
# Functions Tune stores as data, never calls on load: a trial's syncer keeps its last upload command as
# (function, arguments) when the driver dies mid-sync. A pickle may name them, never call them.
REFERENCED = frozenset({"ray.train._internal.storage._upload_to_fs_path"})
# What Tune unpickles inside its experiment state, and nothing else (a string that merely looks like hex, such as
# a trial id "8065b789", is no pickle): every {"_type": "CLOUDPICKLE_FALLBACK", "value": <hex>} that its JSON
# decoder meets (ray.tune.utils.serialization), and these top-level fields of each trial's JSON state, which
# Trial.__setstate__ unhexes and unpickles (Ray's private Trial._nonjson_fields: tests/test_tune_layer.py compares
# the two, so an upgrade that adds one fails loudly).
CLOUDPICKLE_FALLBACK = "CLOUDPICKLE_FALLBACK"
TRIAL_PICKLED_FIELDS = ("results", "extra_arg", "placement_group_factory", "_resources",
                        "_default_placement_group_factory")
STATE_FILE = re.compile(r"experiment_state-.*\.json\Z")
# A pickle despite its name: Tune's search generator state (the searcher's sample count, its concurrency limiter).
SEARCH_GENERATOR_FILE = re.compile(r"search_gen_state-.*\.json\Z")
# Tune's state of the searcher: optional on a restore (Tune starts the search generator afresh without it), and
# redundant with the study's own record of the search (decisions.json).
SEARCHER_STATE = re.compile(r"(search_gen_state-.*\.json|searcher-state-.*\.pkl)\Z")


class _Nothing:
    """What every allowed global becomes while checking: it builds and calls nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Nothing()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


def _never_called(qualified: str) -> type:
    """What a REFERENCED global becomes: calling it (REDUCE, NEWOBJ) is a refusal."""

    def refuse(cls, *args, **kwargs):
        raise pickle.UnpicklingError(f"it calls {qualified}, which Tune only stores")

    return type("_NeverCalled", (), {"__new__": refuse})


class _Checker(pickle.Unpickler):
    def __init__(self, file):
        super().__init__(file)
        self.names: set[str] = set()

    def find_class(self, module: str, name: str):
        qualified = f"{module}.{name}"
        self.names.add(qualified)
        if qualified in REFERENCED:
            return _never_called(qualified)
        if qualified not in ALLOWED:
            raise pickle.UnpicklingError(f"it names {qualified}")
        return _Nothing


def check_pickle(data: bytes, where: str) -> set[str]:
    """Refuse (StudyError) a pickle that names anything outside ALLOWED, or that cannot be read; else the
    globals it names."""
    checker = _Checker(io.BytesIO(data))
    try:
        checker.load()
    except Exception as error:  # anything a crafted pickle makes the reader raise is a refusal
        raise StudyError(f"{where}: Tune's saved state holds a pickle this tool will not load ({error}); "
                         f"a damaged or hostile study folder? Nothing of it was run") from None
    return checker.names


TUNER_FILE = "tuner.pkl"  # Tune's pickled Tuner: the searcher and scheduler a restore runs with


def tuner_names(storage, name: str, stage: str) -> set[str]:
    """The globals that the stage's tuner.pkl names (checked as above; empty when there is none)."""
    if not storage.exists(name, stage, TUNER_FILE):
        return set()
    return check_pickle(storage.read_bytes(name, stage, TUNER_FILE), storage.uri(name, stage, TUNER_FILE))


ERROR_PICKLE = "error.pkl"


def check_stage_folder(storage, name: str, stage: str) -> list[str]:
    """Every pickle Tune's restore of this stage would load: the folder's .pkl files and the experiment state.
    Returns what was mended.

    The trials' error.pkl files are removed (see the module's docstring). A searcher state cut short (a driver
    killed while Tune synced it to the storage leaves an empty or partial file) is removed too, and said so:
    Tune restores without it, and the study's record of the search is decisions.json.
    """
    mended = []
    for trial in storage.list_dirs(name, stage):
        if storage.exists(name, stage, trial, ERROR_PICKLE):
            storage.delete(name, stage, trial, ERROR_PICKLE)
    for file in storage.list_files(name, stage):
        where = storage.uri(name, stage, file)
        if file.endswith(".pkl") or SEARCH_GENERATOR_FILE.match(file):
            data = storage.read_bytes(name, stage, file)
            if SEARCHER_STATE.match(file) and _cut_short(data):
                storage.delete(name, stage, file)
                mended.append(f"{where} was cut short (a driver killed while Tune saved it); removed: the search "
                              f"continues from the study's record of it")
                continue
            check_pickle(data, where)
        elif STATE_FILE.match(file):
            _check_experiment_state(storage.read_text(name, stage, file), where)
    return mended


def _cut_short(data: bytes) -> bool:
    """A pickle that ends before its STOP: what a copy cut off by a kill leaves (never loaded, only read as
    opcodes by the checker, which refuses a global outside ALLOWED before it reaches the end)."""
    try:
        _Checker(io.BytesIO(data)).load()
    except EOFError:
        return True
    except pickle.UnpicklingError as error:
        return "truncated" in str(error) or "ran out of input" in str(error).lower()
    except Exception:  # noqa: BLE001 - anything else is for check_pickle to refuse, with its message
        return False
    return False


def _check_experiment_state(text: str, where: str) -> None:
    try:
        state = json.loads(text)
        trials = state["trial_data"]
    except (ValueError, KeyError, TypeError):
        raise StudyError(f"{where}: Tune's experiment state is damaged; move the stage folder away to start the "
                         f"stage afresh (finished trials are kept in it)") from None
    if not isinstance(trials, list):
        raise StudyError(f"{where}: Tune's experiment state is damaged")
    for blob in _embedded(state.get("runner_data"), where):
        check_pickle(blob, where)
    for entry in trials:
        if not isinstance(entry, list) or len(entry) != 2:
            raise StudyError(f"{where}: Tune's experiment state is damaged")
        trial, metadata = _json(entry[0], where), _json(entry[1], where)
        fields = [_unhex(trial[key], where) for key in TRIAL_PICKLED_FIELDS if key in trial]
        for blob in [*fields, *_embedded(trial, where), *_embedded(metadata, where)]:
            check_pickle(blob, where)


def _json(text, where: str) -> dict:
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        raise StudyError(f"{where}: Tune's experiment state is damaged") from None
    if not isinstance(value, dict):
        raise StudyError(f"{where}: Tune's experiment state is damaged")
    return value


def _embedded(value, where: str):
    """The pickles Tune's JSON decoder loads: the value of every CLOUDPICKLE_FALLBACK object, at any depth."""
    if isinstance(value, dict):
        if value.get("_type") == CLOUDPICKLE_FALLBACK:
            yield _unhex(value.get("value"), where)
        for item in value.values():
            yield from _embedded(item, where)
    elif isinstance(value, list):
        for item in value:
            yield from _embedded(item, where)


def _unhex(value, where: str) -> bytes:
    """The bytes Tune would unpickle from a hex field (ray._common.utils.hex_to_binary)."""
    try:
        return bytes.fromhex(value)
    except (TypeError, ValueError):
        raise StudyError(f"{where}: Tune's experiment state is damaged (a pickled field is not hex)") from None
