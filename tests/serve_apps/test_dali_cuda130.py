"""DALI is the CUDA 13 build, as torch's wheels are, and its CPU pipelines run here."""

from __future__ import annotations

from importlib import metadata

import numpy as np

from tests import images


def test_dali_is_the_cuda130_build_and_runs_a_cpu_pipeline() -> None:
    installed = {d.metadata["Name"].lower() for d in metadata.distributions()}
    assert "nvidia-dali-cuda130" in installed
    assert "nvidia-dali-cuda120" not in installed  # a second CUDA runtime in the process

    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def pipe():  # type: ignore[no-untyped-def]
        encoded = fn.external_source(name="encoded", dtype=types.UINT8)
        decoded = fn.decoders.image(encoded, device="cpu", output_type=types.RGB)
        return fn.resize(decoded, size=(32, 32), antialias=True)

    p = pipe()
    p.build()
    p.feed_input("encoded", [np.frombuffer(images.jpeg(s, 96, 72), dtype=np.uint8)
                             for s in range(2)])
    (out,) = p.run()
    assert [np.asarray(out[i]).shape for i in range(2)] == [(32, 32, 3)] * 2
