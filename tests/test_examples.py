"""The examples run as a user would run them, and do what they say."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_checkout_charges_every_order_once_and_dead_letters_the_poison():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "checkout.py"),
                        "--orders", "200", "--poison", "4", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.stdout, r.stderr)
    rep = json.loads(r.stdout)
    assert rep["ok"]
    assert rep["charged"] == rep["good"] == 196 and rep["charged_exactly_once"]
    assert rep["lost"] == []
    assert len(rep["dead_letters"]) == 4
    assert all(reason.startswith("rejected: ValueError: invalid amount")
               for reason in rep["dead_letter_reasons"])
    assert rep["worker_killed"] and rep["restarts"] >= 1
    assert rep["redelivered"] > 0  # the gateway failures were retried
    assert rep["deduplicated"] == 10
