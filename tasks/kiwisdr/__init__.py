"""The KiwiSDR IQ protocol: frame codec, async client, status page and a faithful simulator.

Plain code with no Prefect inside, so it can be tested and reused on its own; the
Prefect tasks in ``tasks/capture.py`` are thin wrappers over it.
"""
