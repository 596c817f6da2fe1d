"""End-to-end comparison of spotify-events with the SDKs users would pick instead.

One orchestrator (:mod:`.run`) starts, per measured run, a loopback sink process
(:mod:`.sink`, or the reference collector) and a producer process
(:mod:`.producer`) that drives one contestant (:mod:`.contestants`) through its
public API with its defaults, on the same workload (:mod:`.workload`). Figures
are counted at the sink; CPU and peak RSS are the producer process's own.

    python -m benchmarks.compare --help
"""
