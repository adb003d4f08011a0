"""sms-relay benchmarks (issue #9): `python -m bench` (full) or `python -m bench --smoke`.

Not timed tests: every figure is printed next to a baseline measured in the same run on the same
machine, as a ratio. Everything listens on 127.0.0.1; every loop is bounded in count and time.
"""
