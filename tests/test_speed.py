"""The speed benchmark runs end to end and reports every stage (no timing thresholds: numbers are not asserted)."""

from __future__ import annotations

import numpy as np

from codec import speed


def test_speed_report_small(sample, tmp_path):
    path = tmp_path / "sample.png"
    sample.convert("RGB").save(path)
    r = speed.run(str(path), quality=50, repeat=1, megapixels=0.3, big_megapixels=0.3)
    for key in ("onic", "onic_large"):
        stages = r[key]["decode_stages_ms"]
        assert {"onnx decoder", "integer scale path", "entropy coding"} <= stages.keys()
        assert r[key]["decode_ms"] > 0 and r[key]["bpp"] > 0
    assert r["memory"]["peak_rss_mb"] > 0 and r["startup"]["decompress_process_ms"] > 0
    text = speed.format_report(r)
    assert "onic on sample.png" in text and "peak RSS" in text


def test_speed_report_without_the_large_image(sample, tmp_path):
    path = tmp_path / "sample.png"
    sample.convert("RGB").save(path)
    r = speed.run(str(path), quality=50, repeat=1, megapixels=0)
    assert "onic_large" not in r and r["onic"]["decode_ms"] > 0
    assert "large" not in speed.format_report(r)


def test_the_round_trip_reports_its_own_peak_not_its_parent_s():
    # Linux carries a parent's peak RSS into its children (ru_maxrss): this process now holds
    # 1 GiB, far more than a 64×64 round trip does.
    held = np.ones(2**27)
    try:
        m = speed.peak_rss_round_trip(64, 64, 50)
    finally:
        del held
    assert 0 < m["rss_before_mb"] <= m["peak_rss_mb"] < 1024
