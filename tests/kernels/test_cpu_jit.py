"""Cache freshness: the kernels' cached machine code is stamped with a digest of all the kernel sources, so code
made from other sources is recompiled, wherever Numba keeps its cache (here a NUMBA_CACHE_DIR)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from numba.core import caching

from kimi_local.kernels import cpu_jit
from tests.kernels.test_cpu_nojit import ROOT

MODULE = """
from kimi_local.kernels.cpu_jit import jit


@jit
def twice(x):
    return 2 * x
"""

RUN = """
import json, sys
sys.path.insert(0, {folder!r})
from kimi_local.kernels import cpu_jit
if {digest!r}:
    cpu_jit.SOURCES_DIGEST = {digest!r}  # as if the kernel sources had changed since the cache was written
import stamped_module
assert stamped_module.twice(21) == 42
stats = stamped_module.twice.stats
print(json.dumps([sum(stats.cache_hits.values()), sum(stats.cache_misses.values())]))
"""


def _run(tmp_path, digest=""):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("NUMBA_DISABLE_JIT", None)
    code = RUN.format(folder=str(tmp_path), digest=digest)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    hits, misses = json.loads(proc.stdout.strip().splitlines()[-1])
    return hits, misses


def test_cached_code_is_reused_until_the_kernel_sources_change(tmp_path):
    (tmp_path / "stamped_module.py").write_text(textwrap.dedent(MODULE))
    assert _run(tmp_path) == (0, 1)  # compiled and written
    assert _run(tmp_path) == (1, 0)  # loaded
    assert _run(tmp_path, digest="other sources") == (0, 1)  # same file, other kernel sources: compiled again
    assert _run(tmp_path, digest="other sources") == (1, 0)


def test_only_marked_functions_get_the_stamped_locators():
    def plain(x):
        return x

    def kernel(x):
        return x

    setattr(kernel, cpu_jit.MARK, True)
    plain_locator = caching.FunctionCache(plain)._impl.locator
    kernel_locator = caching.FunctionCache(kernel)._impl.locator
    assert not getattr(type(plain_locator), "stamped", False)
    assert kernel_locator.get_source_stamp() == (plain_locator.get_source_stamp(), cpu_jit.SOURCES_DIGEST)


def test_the_digest_covers_every_kernel_source():
    names = {path.name for path in cpu_jit.KERNEL_SOURCES}
    assert {"cpu_simd.py", "cpu_decode.py", "cpu_gemv.py", "cpu_moe.py", "fp8.py"} <= names
    assert cpu_jit.sources_digest(cpu_jit.KERNEL_SOURCES[:-1]) != cpu_jit.SOURCES_DIGEST
