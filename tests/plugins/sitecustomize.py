"""Loaded at start-up by every Python process that has this folder on PYTHONPATH (the tests' worker
processes): installs the fault injection of `faults_plugin` when RESIZE_PIPELINE_TEST_FAULTS is set."""

import os

if os.environ.get("RESIZE_PIPELINE_TEST_FAULTS"):
    try:
        import faults_plugin

        faults_plugin.install()
    except ImportError:  # the package is not importable in this process: nothing to patch
        pass
