#!/usr/bin/env python3
"""Reads a stampede latency.hlog with HdrHistogram's own Python log reader (PyPI: hdrhistogram)
and prints, as JSON, the number of intervals and the total count and p99 per tag.

Usage: scripts/hlog-read.py latency.hlog
"""
import json
import sys

from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader


def main(path):
    reader = HistogramLogReader(path, HdrHistogram(1, 3_600_000_000, 3))
    merged = {}
    intervals = 0
    while True:
        interval = reader.get_next_interval_histogram()
        if interval is None:
            break
        intervals += 1
        tag = interval.get_tag()
        if tag not in merged:
            merged[tag] = HdrHistogram(1, 3_600_000_000, 3)
        merged[tag].add(interval)
    print(json.dumps({
        "intervals": intervals,
        "tags": {
            tag: {"count": h.get_total_count(), "p99": h.get_value_at_percentile(99)}
            for tag, h in merged.items()
        },
    }))


if __name__ == "__main__":
    main(sys.argv[1])
