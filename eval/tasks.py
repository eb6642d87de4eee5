"""Which lm-eval tasks a config means, and loading them with clear errors.

Shared by the evaluation stage (:mod:`eval.stage`) and the benchmark-derived targets
(:mod:`eval.targets`), so that both see the very same task definitions.

* Task folders: the synthetic suite's generated folder (``eval.synthetic`` set) plus any
  ``eval.include_path`` folder(s) of the user's own task YAMLs, used as they are.
* ``TaskManager``: indexing lm-eval's ~14,700 built-in tasks takes ~9 s, a folder of our own 0.05 s,
  so the built-ins are indexed only when some requested name is not found in the folders; managers are
  cached per process (keyed by the folders' YAML files and their mtimes).
* Datasets: a built-in task downloads its dataset from the Hugging Face hub when it is built. When the
  hub is unreachable (probed once, 3 s at most) and offline mode is not set, offline mode is switched on
  while tasks load, so a cached copy is used and a missing one fails at once instead of after a minute of
  retries; the error says the task needs hub access or a local copy.
"""

from __future__ import annotations

import difflib
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import urlparse

import yaml

from eval.synthetic_tasks import synthetic_task_dir
from tikmix.config import EvalConfig, typed
from tikmix.errors import ConfigError, DataError

_TM_CACHE: dict[tuple, Any] = {}
_HUB_PROBE: dict[str, tuple[float, bool, str]] = {}
_TRUE = {"1", "true", "yes", "on"}


def eval_config(eval_cfg: EvalConfig | Mapping[str, Any] | None) -> EvalConfig:
    """The eval section as its dataclass, checked (EvalConfig's ``__post_init__``): the run's typed section as it
    is, a mapping of its keys (``python -m eval``'s composed node, a test's) through the schema; None = no eval."""
    if eval_cfg is None:
        return EvalConfig(name="none", limit=None)
    return typed(EvalConfig, eval_cfg, "eval")


# ------------------------------------------------------------------------------------------ folders


def include_paths(cfg: EvalConfig) -> list[Path]:
    """The task folders of an eval config: the generated synthetic suite first, then eval.include_path."""
    paths: list[Path] = []
    if cfg.synthetic is not None:
        paths.append(synthetic_task_dir(cfg.synthetic))
    for p in cfg.include_path:
        path = Path(p).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError("eval.include_path", f"{path} is not a folder (it should hold lm-eval task YAMLs)")
        files = sorted(list(path.rglob("*.yaml")) + list(path.rglob("*.yml")))
        if not files:
            raise ConfigError("eval.include_path", f"{path} holds no task YAML files (*.yaml)")
        for f in files:
            _check_yaml(f)
        paths.append(path)
    return paths


def _check_yaml(path: Path) -> None:
    """A task YAML that does not parse is refused by name (lm-eval would skip it, and its task would then
    be reported unknown). lm-eval's ``!function`` tags are accepted, never executed here."""

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    try:
        yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        detail = " ".join(str(e).split())
        raise ConfigError("eval.include_path", f"task file {path} is not valid YAML ({detail[:300]})") from None


def _folder_signature(paths: list[Path]) -> tuple:
    sig = []
    for p in paths:
        for f in sorted(list(p.rglob("*.yaml")) + list(p.rglob("*.yml")) + list(p.rglob("*.py"))):
            try:
                st = f.stat()
            except OSError:
                continue
            sig.append((str(f), st.st_mtime_ns, st.st_size))
    return tuple(sig)


def task_manager(paths: list[Path], include_defaults: bool):
    """A (cached) lm-eval TaskManager over ``paths``, with lm-eval's built-in tasks only if asked."""
    key = (tuple(str(p) for p in paths), include_defaults, _folder_signature(paths))
    tm = _TM_CACHE.get(key)
    if tm is None:
        from lm_eval.tasks import TaskManager

        tm = TaskManager(include_path=[str(p) for p in paths] or None, include_defaults=include_defaults)
        if len(_TM_CACHE) > 8:
            _TM_CACHE.clear()
        _TM_CACHE[key] = tm
    return tm


def resolve(cfg: EvalConfig, names: list[str], field: str = "eval.tasks"):
    """The TaskManager that knows every name in ``names``; an unknown name is a ConfigError with the
    closest registered names (difflib)."""
    paths = include_paths(cfg)
    if paths:
        tm = task_manager(paths, include_defaults=False)
        if all(n in tm.task_index for n in names):
            return tm
    tm = task_manager(paths, include_defaults=True)
    unknown = [n for n in names if n not in tm.task_index]
    if unknown:
        parts = []
        local = [n for n in tm.all_tasks if _from_folders(tm, n, paths)]
        for n in unknown:
            close = difflib.get_close_matches(n, local, n=5, cutoff=0.6) or difflib.get_close_matches(
                n, tm.all_tasks, n=5, cutoff=0.6
            )
            parts.append(f"{n!r}" + (f" (did you mean: {', '.join(close)}?)" if close else ""))
        where = f" in {', '.join(str(p) for p in paths)} or" if paths else ""
        raise ConfigError(
            field, f"unknown lm-eval task(s) {', '.join(parts)}: not found{where} among lm-eval's built-in tasks"
        )
    return tm


def _from_folders(tm: Any, name: str, paths: list[Path]) -> bool:
    e = tm.task_index.get(name)
    yp = getattr(e, "yaml_path", None)
    return bool(yp) and any(str(yp).startswith(str(p)) for p in paths)


# --------------------------------------------------------------------------------------- hub access


def _offline_env() -> bool:
    return any(
        os.environ.get(k, "").strip().lower() in _TRUE
        for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """Whether the Hugging Face hub answers a TCP connection (cached for a minute)."""
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    u = urlparse(endpoint)
    host, port = u.hostname or "huggingface.co", u.port or (443 if u.scheme != "http" else 80)
    hit = _HUB_PROBE.get(endpoint)
    if hit and time.monotonic() - hit[0] < 60:
        return hit[1], hit[2]
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        ok, why = True, ""
    except OSError as e:
        ok, why = False, f"{host}:{port} unreachable ({type(e).__name__}: {e})"
    _HUB_PROBE[endpoint] = (time.monotonic(), ok, why)
    return ok, why


@contextmanager
def hub_guard(needed: bool = True) -> Iterator[str]:
    """Offline mode for the datasets/hub libraries while tasks load, when the hub cannot be reached.

    Yields a note for error messages ("" when the hub is reachable or offline mode was already set)."""
    if not needed or _offline_env():
        yield "offline mode is set (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE)" if needed else ""
        return
    ok, why = hub_reachable()
    if ok:
        yield ""
        return
    patched = []
    try:
        import datasets.config as dc

        patched.append((dc, "HF_HUB_OFFLINE", dc.HF_HUB_OFFLINE))
        dc.HF_HUB_OFFLINE = True
        if hasattr(dc, "HF_DATASETS_OFFLINE"):
            patched.append((dc, "HF_DATASETS_OFFLINE", dc.HF_DATASETS_OFFLINE))
            dc.HF_DATASETS_OFFLINE = True
    except ImportError:  # pragma: no cover
        pass
    try:
        import huggingface_hub.constants as hc

        patched.append((hc, "HF_HUB_OFFLINE", hc.HF_HUB_OFFLINE))
        hc.HF_HUB_OFFLINE = True
    except ImportError:  # pragma: no cover
        pass
    try:
        yield f"the hub is unreachable from here: {why}"
    finally:
        for mod, attr, val in reversed(patched):
            setattr(mod, attr, val)


# ------------------------------------------------------------------------------------------ loading


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return (s[0] if s else "")[:300]


_DATA_ERRORS = (
    "ConnectionError",
    "OfflineModeIsEnabled",
    "LocalEntryNotFoundError",
    "DatasetNotFoundError",
    "FileNotFoundError",
    "HfHubHTTPError",
    "RepositoryNotFoundError",
    "GatedRepoError",
    "EmptyDatasetError",
    "DataFilesNotFoundError",
)


def load_task(tm: Any, name: str, paths: list[Path]) -> dict:
    """Build one task/group/tag: ``{"tasks": {leaf: Task}, "groups": {name: Group}}`` (lm-eval's
    TaskManager.load), turning a dataset that cannot be read into a DataError that says why."""
    local = _from_folders(tm, name, paths)
    with hub_guard(needed=not local) as note:
        try:
            return tm.load([name])
        except Exception as e:  # noqa: BLE001 - lm-eval and datasets raise anything here
            chain = {type(x).__name__ for x in _chain(e)}
            msg = f"eval task {name!r}: its dataset could not be loaded ({type(e).__name__}: {_first_line(e)})"
            if chain & set(_DATA_ERRORS) or isinstance(e, (ConnectionError, OSError)):
                if local:
                    raise DataError(
                        f"{msg}. The task comes from {tm.task_index[name].yaml_path}; check the files it names "
                        f"(relative data_files paths resolve against the working directory {os.getcwd()}, "
                        f"not the YAML's folder: use absolute paths or custom_dataset)"
                    ) from e
                raise DataError(
                    f"{msg}. It needs Hugging Face hub access or a local copy"
                    + (f" ({note})" if note else "")
                    + ": download it once where the hub is reachable (it lands in the HF datasets cache, HF_HOME) "
                    "and run with HF_DATASETS_OFFLINE=1, or evaluate offline with eval=synthetic9 or "
                    "eval.include_path=DIR of your own task YAMLs"
                ) from e
            raise DataError(f"eval task {name!r} could not be built: {type(e).__name__}: {_first_line(e)}") from e


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__  # type: ignore[assignment]


def leaf_tasks(obj: Any) -> list:
    """The leaf Task objects of a Task or Group."""
    from lm_eval.api.group import Group

    if isinstance(obj, Group):
        return list(obj.get_all_tasks())
    return [obj]
