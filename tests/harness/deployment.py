"""Renamed to tests/harness/deployment_under_test.py. This alias stays only for
benchmarks/deploy.py (outside tests/) until that imports the new name; tests never use it."""

import sys

from tests.harness import deployment_under_test

sys.modules[__name__] = deployment_under_test
