"""GamePipeline's benchmark harness (issue 8); run it with ``make bench``.

Every benchmark measures the product against a baseline taken in the same run, talks only
to loopback, and bounds each of its loops in count and in time.
"""
