"""Fixtures for tests/reliability: the integration harness (tests/integration/
lib on sys.path) and its fixtures (mtad_factory, mtad, build, tls_files, and
the sanitizer/log handling at teardown), reused from the integration
conftest rather than copied."""
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_INTEGRATION = os.path.join(os.path.dirname(_HERE), "integration")
sys.path.insert(0, os.path.join(_INTEGRATION, "lib"))
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "lab"))

_spec = importlib.util.spec_from_file_location(
    "mtad_integration_conftest", os.path.join(_INTEGRATION, "conftest.py"))
_ic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ic)

pytest_runtest_makereport = _ic.pytest_runtest_makereport
build = _ic.build
tls_files = _ic.tls_files
mtad_factory = _ic.mtad_factory
mtad = _ic.mtad
