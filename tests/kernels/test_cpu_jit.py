"""The Numba cache guard: cached machine code made from other kernel sources is dropped, current code is kept."""

from __future__ import annotations

from kimi_local.kernels.cpu_jit import drop_stale_machine_code, sources_digest


def test_cache_files_are_dropped_when_the_kernel_sources_change(tmp_path):
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    files = [cache / "cpu_moe._experts_ffn-1.py311.nbi", cache / "cpu_moe._experts_ffn-1.py311.1.nbc"]
    other = cache / "cpu_moe.cpython-311.pyc"
    for path in files + [other]:
        path.write_bytes(b"x")
    (cache / "kernel-sources.sha256").write_text("made from older sources\n")
    drop_stale_machine_code(tmp_path)
    assert not any(path.exists() for path in files) and other.exists()
    assert (cache / "kernel-sources.sha256").read_text().strip() == sources_digest()

    files[0].write_bytes(b"x")  # made since, from the current sources: kept
    drop_stale_machine_code(tmp_path)
    assert files[0].exists()


def test_a_cache_without_a_stamp_is_dropped(tmp_path):
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    (cache / "cpu_gemv.gemv_rows-9.py311.nbi").write_bytes(b"x")
    drop_stale_machine_code(tmp_path)
    assert not (cache / "cpu_gemv.gemv_rows-9.py311.nbi").exists()
