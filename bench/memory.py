"""Memory: resident set size before and after 10,000 hook calls in one process (100-resource prefetch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import gc, json, sys, orjson
from bench import workload
from bench.apps import service_app

def rss_kb():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1])

calls = int(sys.argv[1])
app = service_app(log_level='INFO')
client = app.test_client()
recorder = app.extensions['nxp2_cds'].recorder
body = orjson.dumps(workload.request(100))
def call(i):
    # a fresh hook instance each time, as in real use (each issued card is recorded)
    document = body.replace(b'7f2d1c0e-4b9a-4c1e-9f3a-0d6c5b4a3921', b'7f2d1c0e-4b9a-4c1e-9f3a-%012d' % i)
    assert client.post('/cds-services/nxp2-jdm-risk', data=document, content_type='application/json').status_code == 200
for i in range(300):
    call(i)
recorder.flush(30); gc.collect()
before = rss_kb()
for i in range(300, 300 + calls):
    call(i)
recorder.flush(30); gc.collect()
after = rss_kb()
print(json.dumps({'calls': calls, 'rss_before_kb': before, 'rss_after_kb': after, 'cards_written': recorder.written}))
"""


def run(quick: bool = False) -> dict[str, Any]:
    calls = 2000 if quick else 10_000
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(calls)], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["growth"] = round((result["rss_after_kb"] - result["rss_before_kb"]) / result["rss_before_kb"], 4)
    return result
