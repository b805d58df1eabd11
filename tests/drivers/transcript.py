"""Prints a scenario's transcript for tests/drivers.rs: one line per
top-level key, and one line per element of a list, so that the Rust test can
name the first line that differs from the direct run."""

import json


def dump(transcript):
    for key in sorted(transcript):
        value = transcript[key]
        if isinstance(value, list):
            print(f"{key}: [{len(value)} items]")
            for item in value:
                print("  " + json.dumps(item, sort_keys=True))
        else:
            print(f"{key}: {json.dumps(value, sort_keys=True)}")
