"""Fixtures for the reliability tests: the integration harness
(tests/integration/conftest.py and lib/) reused as is, so these tests get
the same per-test mtad, MTAD_BUILD_DIR handling and sanitizer checks."""
import importlib.util
import os
import sys

_INTEGRATION = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            os.pardir, "integration")
sys.path.insert(0, os.path.join(_INTEGRATION, "lib"))

_spec = importlib.util.spec_from_file_location(
    "mtad_integration_conftest", os.path.join(_INTEGRATION, "conftest.py"))
_shared = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shared)

# Re-exported: pytest finds fixtures and hooks by name in this module.
pytest_runtest_makereport = _shared.pytest_runtest_makereport
build = _shared.build
tls_files = _shared.tls_files
mtad_factory = _shared.mtad_factory
mtad = _shared.mtad
