def pytest_configure(config):
    config.addinivalue_line("markers", "network: needs the package index (pip download); skip with -m 'not network'")
