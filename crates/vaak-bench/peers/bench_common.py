"""What the Python peers of `vaak bench` share. `vaak bench` writes it beside the peer it runs;
run by hand, Python finds it beside the script (crates/vaak-bench/peers/).
"""

import statistics
import time


def median_time(fn, min_time, min_iters=3, max_iters=1000):
    """Calls `fn` once to warm up, then again until both `min_time` seconds and `min_iters`
    calls have passed (at most `max_iters` calls). Returns the median seconds per call and what
    the warm-up call returned."""
    out = fn()
    samples = []
    start = time.perf_counter()
    while len(samples) < max_iters and (len(samples) < min_iters or time.perf_counter() - start < min_time):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples), out
