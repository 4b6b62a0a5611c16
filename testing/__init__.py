"""Test doubles shared by the test suite and the benchmarks (not part of the distribution).

``testing.fake_twilio`` is a fake Twilio REST API over real HTTP: the boundary voicealert
cannot reach in tests or benchmarks. It lives outside ``tests/`` so that ``bench/`` can use
it without importing the test suite.
"""
