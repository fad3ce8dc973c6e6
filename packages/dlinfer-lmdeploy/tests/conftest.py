from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

torch.set_num_threads(max(1, min(4, torch.get_num_threads())))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``tiny_model(kind)`` -> path of the locally built random-weight checkpoint of the model table's row
    ``kind`` (fp32, cached per session); its oracle loads ``model_table.oracle_path(path)``."""
    from dlinfer_lmdeploy.testing.model_table import BY_KIND

    built: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in built:
            built[kind] = BY_KIND[kind].build(tmp_path_factory.mktemp(f"tiny_{kind}"))
        return built[kind]

    return get


@pytest.fixture(scope="session")
def bench_script() -> Callable[[str], Any]:
    """``bench_script("profile_batch1")`` -> that script of ``bench/`` loaded as a module (no ``__main__`` run)."""
    import importlib.util

    def load(name: str) -> Any:
        path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"{name}_under_test", path)
        assert spec is not None and spec.loader is not None, path
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def hf_greedy() -> Callable[[Path, list[list[int]], int], list[list[int]]]:
    from dlinfer_lmdeploy.testing import hf_oracle

    cache: dict[Any, list[list[int]]] = {}

    def run(path: Path, prompts: list[list[int]], n: int) -> list[list[int]]:
        key = (str(path), tuple(map(tuple, prompts)), n)
        if key not in cache:
            cache[key] = hf_oracle.greedy(path, prompts, n)
        return cache[key]

    return run


@pytest.fixture
def op_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[collections.Counter[str]]:
    """Counts calls of every public ``dlinfer.ops`` function made through the adaptor."""
    import dlinfer.ops
    from dlinfer.spec import SPECS

    counts: collections.Counter[str] = collections.Counter()
    for name in SPECS:
        fn = getattr(dlinfer.ops, name)

        def spy(*args: Any, __fn: Any = fn, __name: str = name, **kwargs: Any) -> Any:
            counts[__name] += 1
            return __fn(*args, **kwargs)

        monkeypatch.setattr(dlinfer.ops, name, spy)
    yield counts
